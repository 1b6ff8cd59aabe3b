/*
 * The privacy accountant: what a history of noisy releases (one per
 * federated sync) costs in total, as one (ε, δ).
 *
 *   basic  ε = Σ εᵢ, δ = Σ δᵢ: sequential composition of what each
 *          mechanism reported.  Always valid, whatever the mechanism.
 *   rdp    Rényi DP (Mironov 2017): LAPLACE and GAUSSIAN releases are
 *          composed as RDP curves (they add up order by order), then
 *          turned into (ε, target_delta) with the improved conversion of
 *          Canonne, Kamath & Steinke 2020 (Prop. 12) / Balle et al. 2020
 *          (Thm. 21):
 *              ε(α) = rdp(α) + log((α−1)/α) − (log δ + log α)/(α−1),
 *          minimised over a fixed grid of orders (and ε = 0 at an order
 *          where δ ≥ √(1 − e^{−rdp(α)}), a total-variation bound).  Much
 *          tighter than basic for many small releases; not used for pure
 *          Laplace histories where basic is tighter.
 *
 * The grid of orders α (165 values; a superset of Opacus' default
 * 1 + x/10, x = 1..99, and 12..63):
 *     1.1, 1.2, ..., 10.9        (step 0.1)
 *     11, 12, ..., 64            (step 1)
 *     80, 96, 128, 160, 192, 256, 320, 384, 512, 640, 768, 1024
 * An optimum outside the grid only makes ε larger (conservative): e.g. a
 * single Gaussian release with z ≳ 300 at δ = 1e-6 would want α > 1024,
 * and no history, however private, gets below the floor at α = 1024:
 * (log(1/δ) − log 1024)/1023 − 1/1024 ≈ 0.0058 at δ = 1e-6.
 *
 * RDP curves, per release, with z its noise_multiplier:
 *   GAUSSIAN  α / (2z²) (z = σ/Δ₂).
 *   LAPLACE   Mironov 2017 Prop. 6 with e = 1/z (z = b/Δ₁):
 *             (1/(α−1))·log( α/(2α−1)·e^{(α−1)e} + (α−1)/(2α−1)·e^{−αe} ),
 *             computed as e + log1p((α−1)/(2α−1)·expm1(−(2α−1)e))/(α−1),
 *             which neither overflows nor exceeds e for any α, e; then
 *             capped by αe²/2 (Bun–Steinke: ε-DP is ε²/2-zCDP) and floored
 *             at 0, so the cancellation for small e cannot lift it above
 *             that valid bound nor below zero.  The curve f(t) of a shift
 *             t is a log-sum-exp of affine functions of t, hence convex
 *             with f(0) = 0, so for a vector with Laplace noise on every
 *             coordinate and ‖x − x'‖₁ ≤ Δ the worst case is the whole
 *             shift on one coordinate: the scalar formula holds.
 *             dp-laplace draws *discrete* Laplace on a grid g ≤ 2⁻²⁰·b;
 *             its RDP exceeds the continuous curve by a relative ≈ 0.2/S²
 *             for a shift of S grid steps (S ≳ 2²⁰ here: ~1e-13), well
 *             inside the ≥ 2⁻²¹ slack its noise scale already carries
 *             (docs/differential-privacy.md §4).
 *   OTHER     no curve: its reported (ε, δ) is added on top (basic).
 *             Family values this core does not know are treated as OTHER.
 *   NONE      no privacy: ε = +inf.
 *
 * Pure functions: no I/O, no allocation, no global state; thread-safe.
 */
#ifndef SOVMESH_CORE_PRIVACY_ACCOUNTANT_H
#define SOVMESH_CORE_PRIVACY_ACCOUNTANT_H

#include <stddef.h>
#include <sovmesh/noise.h>
#include <sovmesh/plugin.h>

typedef enum accountant_kind {
	ACCOUNTANT_BASIC = 0,
	ACCOUNTANT_RDP = 1,
} accountant_kind;

/* "basic" | "rdp" (exact, lower case) -> *out; -EINVAL for any other name
 * (NULL included), *out untouched. */
int accountant_parse(const char *name, accountant_kind *out);

/* "basic", "rdp", or "unknown" for a value outside the enum. */
const char *accountant_name(accountant_kind k);

/* One release, as the noise mechanism's sovmesh_privacy_cost described it. */
typedef struct accountant_release {
	sovmesh_noise_family family; /* SOVMESH_NOISE_* */
	double noise_multiplier;     /* Laplace: b/Δ₁; Gaussian: σ/Δ₂; else ignored */
	double epsilon, delta;       /* the release's own (ε, δ) as the mechanism reported it */
} accountant_release;

/*
 * (ε, δ) of the composition of releases[0..n-1].  Every field must be
 * >= 0 and not NaN (+inf is allowed: a mechanism without privacy).
 *
 *  BASIC: ε = Σ εᵢ, δ = Σ δᵢ (any family; a NONE release makes ε = +inf).
 *         target_delta is ignored.
 *  RDP:   target_delta in (0, 1).  LAPLACE and GAUSSIAN releases are
 *         composed in RDP over the grid above and converted to
 *         (ε_rdp, target_delta).  If all of those releases are LAPLACE
 *         with δ = 0 (pure ε-DP, as dp-laplace reports), their basic sum
 *         Σε is also a bound, and is used instead (with no δ) when it is
 *         not larger.
 *         OTHER releases then add their own (ε, δ).  So
 *           *delta_out = target_delta + Σ δ(OTHER)   (RDP bound used), or
 *                        Σ δ(OTHER)                  (basic bound used; 0
 *                                                     for a Laplace-only
 *                                                     history).
 *         A NONE release makes ε = +inf (δ = Σ δᵢ).
 *  Adding a release never lowers the ε returned, in either kind.
 *
 * n == 0 -> ε = 0, δ = 0.  0, or -EINVAL with a message (unknown kind,
 * NULL outputs, releases NULL with n > 0, a NaN or negative field naming
 * the release, target_delta out of range for RDP); the outputs are only
 * written on success.  Never NaN; +inf when nothing bounds the loss.
 */
int accountant_compose(accountant_kind k, const accountant_release *releases, size_t n,
                       double target_delta, double *epsilon_out, double *delta_out,
                       sovmesh_error *err);

/*
 * RDP of one release at order alpha > 1 (alpha = +inf allowed: the pure-DP
 * limit), with the curves above.  GAUSSIAN / LAPLACE: >= 0, +inf for
 * z = 0, 0 for z = +inf; NONE and OTHER (no known curve): +inf.  NaN only
 * for invalid arguments (alpha <= 1 or NaN, noise_multiplier < 0 or NaN).
 */
double accountant_rdp(sovmesh_noise_family family, double noise_multiplier, double alpha);

#endif
