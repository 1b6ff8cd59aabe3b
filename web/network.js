/* Settings → Network: polls the control API mirror on this origin every
 * 2 s.  The key that allows changes comes in the URL fragment (#key=...,
 * given by `sovmesh network`), never in the HTML: it is moved to
 * sessionStorage and wiped from the address bar at once. */
'use strict';
(function () {
  const API = '/sovmesh/v1';
  const KEY = 'sovmesh-network-key';
  const $ = (id) => document.getElementById(id);

  function takeKey() {
    const m = /(?:^#|&)key=([0-9A-Za-z]+)/.exec(location.hash);
    if (m) {
      try { sessionStorage.setItem(KEY, m[1]); } catch (e) { /* private mode */ }
      history.replaceState(null, '', location.pathname + location.search);
      return m[1];
    }
    try { return sessionStorage.getItem(KEY); } catch (e) { return null; }
  }
  const key = takeKey();

  function say(text, isError) {
    const s = $('status');
    s.textContent = text;
    s.classList.toggle('error', !!isError);
  }

  async function getJSON(path) {
    const r = await fetch(API + path, { cache: 'no-store', credentials: 'same-origin' });
    if (!r.ok) throw new Error(path + ': HTTP ' + r.status);
    return r.json();
  }

  async function post(path, body) {
    if (!key) throw new Error('read-only: open this page with `sovmesh network`');
    const r = await fetch(API + path, {
      method: 'POST', cache: 'no-store', credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', 'X-Sovmesh-Token': key },
      body: JSON.stringify(body || {}),
    });
    let j = null;
    try { j = await r.json(); } catch (e) { /* empty */ }
    if (!r.ok) throw new Error((j && j.error) || ('HTTP ' + r.status));
    return j;
  }

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'class') e.className = v; else e.setAttribute(k, v);
    }
    for (const k of kids) if (k !== null && k !== undefined)
      e.append(k instanceof Node ? k : String(k));
    return e;
  }

  function when(secs) {
    if (!secs) return 'never';
    const d = new Date(secs * 1000);
    const ago = Math.max(0, Math.round(Date.now() / 1000 - secs));
    const rel = ago < 60 ? ago + ' s ago' : ago < 3600 ? Math.round(ago / 60) + ' min ago'
      : ago < 86400 ? Math.round(ago / 3600) + ' h ago' : Math.round(ago / 86400) + ' d ago';
    return rel + ' (' + d.toLocaleString() + ')';
  }

  function hostOf(p) {
    if (p.address) return p.address;
    if (p.addresses && p.addresses.length) return p.addresses.join(', ');
    return '—';
  }

  function row(dl, name, value) {
    dl.append(el('dt', null, name), el('dd', null, value));
  }

  /* Re-render only on a change, and keep the keyboard focus where it was:
   * a poll must not yank focus from a Remove button. */
  let lastPeers = '';
  function renderPeers(j) {
    const sig = JSON.stringify([(j.peers || []).map((p) => [p.name, p.fingerprint, p.status,
      hostOf(p), p.models, p.last_sync]), j.discovered || []]);
    if (sig === lastPeers) return;
    lastPeers = sig;
    const focused = document.activeElement && document.activeElement.closest &&
      document.activeElement.closest('#peers li');
    const focusFp = focused ? focused.dataset.fp : null;
    const ul = $('peers');
    const items = (j.peers || []).map((p) => {
      const on = p.status === 'connected';
      const dl = el('dl');
      row(dl, 'Address', hostOf(p));
      row(dl, 'Models', (p.models && p.models.length) ? p.models.join(', ') : '—');
      row(dl, 'Last sync', when(p.last_sync));
      row(dl, 'Fingerprint', p.short_fingerprint || '');
      const li = el('li', { 'data-peer': p.name, 'data-fp': p.fingerprint },
        el('span', { class: 'peer-state' }, on ? '🟢 Connected' : '🔴 Offline'),
        el('span', { class: 'peer-name' }, p.name), dl);
      const b = el('button', { type: 'button', class: 'danger remove',
        'aria-label': 'Remove peer ' + p.name }, 'Remove');
      b.disabled = !key;
      b.addEventListener('click', () => confirmRemove(p));
      li.append(b);
      return li;
    });
    ul.replaceChildren(...items);
    if (focusFp) {
      const again = items.find((li) => li.dataset.fp === focusFp);
      if (again) again.querySelector('button').focus();
    }
    $('peers-empty').hidden = items.length > 0;
    const du = $('discovered');
    const disc = (j.discovered || []).map((d) => {
      const dl = el('dl');
      row(dl, 'Address', hostOf(d));
      if (d.short_fingerprint || d.fingerprint)
        row(dl, 'Fingerprint', d.short_fingerprint || String(d.fingerprint).slice(0, 16));
      return el('li', null, el('span', { class: 'peer-name' }, d.name || 'unnamed device'), dl);
    });
    du.replaceChildren(...disc);
    $('discovered-empty').hidden = disc.length > 0;
  }

  function renderBudget(b) {
    const box = $('budget');
    if (!b || b.enabled === false) {
      box.replaceChildren(el('p', { class: 'muted', id: 'budget-off' },
        'Federated learning is off on this node: no privacy budget is spent.'));
      return;
    }
    const total = Number(b.total) || 0, spent = Number(b.spent) || 0;
    const remaining = b.remaining !== undefined ? Number(b.remaining) : total - spent;
    const pct = total > 0 ? Math.min(100, Math.max(0, spent / total * 100)) : 0;
    const fill = el('span');
    fill.style.width = pct.toFixed(1) + '%';
    const bar = el('div', { class: 'bar', role: 'meter', 'aria-label': 'privacy budget spent',
      'aria-valuemin': '0', 'aria-valuemax': String(total), 'aria-valuenow': String(spent) }, fill);
    box.replaceChildren(bar, el('p', { id: 'budget-text' },
      'ε spent ' + spent.toFixed(2) + ' of ' + total.toFixed(2) + ' — remaining ' +
      remaining.toFixed(2)));
  }

  function renderStats(st) {
    const a = (st && st.inference && st.inference.router && st.inference.router.answered) || {};
    const items = ['local', 'peer', 'cache', 'template'].map((k) =>
      el('div', { 'data-stat': k }, el('dt', null, 'Answered by ' + k),
        el('dd', null, String(a[k] || 0))));
    $('stats').replaceChildren(...items);
  }

  let offerEnd = 0, offerTimer = 0;
  function tick() {
    const left = Math.max(0, Math.round((offerEnd - Date.now()) / 1000));
    $('countdown').textContent = Math.floor(left / 60) + ':' + String(left % 60).padStart(2, '0');
    if (left === 0) {
      clearInterval(offerTimer);
      $('offer-state').textContent = 'This code has expired: generate a new one.';
      $('show-qr').disabled = true;
    }
  }

  async function generate() {
    try {
      const o = await post('/pair/code');
      $('code').textContent = o.code;
      $('offer').hidden = false;
      $('qr').hidden = true;
      $('offer-state').textContent = 'Waiting for the other device…';
      offerEnd = Date.now() + (o.expires_in_secs || 0) * 1000;
      clearInterval(offerTimer);
      tick();
      offerTimer = setInterval(tick, 1000);
      $('show-qr').disabled = false;
      say('Pairing code generated: enter it on the other device.');
    } catch (e) { say('Could not generate a code: ' + e.message, true); }
  }

  async function showQR() {
    /* Fetch, then show as a data: URL (img-src 'self' data:). */
    try {
      const r = await fetch(API + '/pair/qr.svg', { cache: 'no-store' });
      if (!r.ok) throw new Error('HTTP ' + r.status);
      const svg = await r.text();
      $('qr-img').src = 'data:image/svg+xml;base64,' + btoa(unescape(encodeURIComponent(svg)));
      $('qr').hidden = false;
      say('QR code shown.');
    } catch (e) { say('Could not show the QR code: ' + e.message, true); }
  }

  async function join(ev) {
    ev.preventDefault();
    const code = $('join-code').value.trim(), addr = $('join-addr').value.trim();
    const body = { code };
    if (addr) body.addr = addr;
    $('join-btn').disabled = true;
    say('Pairing…');
    try {
      const j = await post('/pair/join', body);
      const name = (j && (j.name || (j.peer && j.peer.name))) || 'the peer';
      say('Paired with ' + name + '.');
      $('join-form').reset();
      refresh();
    } catch (e) { say('Pairing failed: ' + e.message, true); }
    $('join-btn').disabled = !key;
  }

  let pending = null, opener = null;
  function confirmRemove(p) {
    pending = p;
    opener = document.activeElement;
    $('confirm-text').textContent = 'Remove ' + p.name + ' (' + (p.short_fingerprint || '') +
      ')? It is refused at once and must be paired again to come back.';
    $('confirm').showModal();
    $('confirm-cancel').focus();
  }

  $('confirm').addEventListener('close', async () => {
    const p = pending;
    pending = null;
    if (opener && opener.isConnected) opener.focus();
    if (!p || $('confirm').returnValue !== 'remove') return;
    try {
      await post('/peers/remove', { peer: p.fingerprint || p.name });
      say('Removed ' + p.name + '.');
      refresh();
    } catch (e) { say('Could not remove ' + p.name + ': ' + e.message, true); }
  });

  let last = '';
  async function refresh() {
    try {
      const [id, peers, budget, status] = await Promise.all([
        getJSON('/id'), getJSON('/peers'),
        getJSON('/budget').catch(() => ({ enabled: false })), getJSON('/status')]);
      $('node-name').textContent = id.name;
      $('node-fp').textContent = id.short_fingerprint;
      renderPeers(peers);
      renderBudget(budget);
      renderStats(status);
      document.body.dataset.loaded = '1';
      if (last) { last = ''; say(''); }
    } catch (e) {
      last = e.message;
      say('Cannot reach sovmeshd: ' + e.message, true);
    }
  }

  if (!key) {
    $('readonly').hidden = false;
    document.querySelector('.needs-key').dataset.locked = '';
    for (const b of document.querySelectorAll('.needs-key button, .needs-key input'))
      b.disabled = true;
  }
  $('gen-code').addEventListener('click', generate);
  $('show-qr').addEventListener('click', showQR);
  $('join-form').addEventListener('submit', join);
  refresh();
  setInterval(refresh, 2000);
})();
