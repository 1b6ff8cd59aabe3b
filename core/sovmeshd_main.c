/* sovmeshd — the daemon's command line.  The work is in daemon.c. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "build_config.h"
#include "daemon.h"
#include "log.h"

static const char usage_text[] =
    "Usage: sovmeshd [-c FILE] [--check-config] [--log-level LEVEL] [--version] [--help]\n"
    "\n"
    "The sovmesh daemon: joins this device to a private mesh of paired peers\n"
    "for mesh inference and federated learning.\n"
    "\n"
    "  -c, --config FILE     configuration file (libconfig syntax).  Without it:\n"
    "                        " SOVMESH_SYSTEM_CONFIG " if it exists,\n"
    "                        else the embedded default configuration\n"
    "      --check-config    validate the configuration and the plugins it names,\n"
    "                        then exit (0 valid, 1 with one error line naming\n"
    "                        file, line and key)\n"
    "      --print-default-config\n"
    "                        print the embedded default configuration and exit\n"
    "  -l, --log-level LEVEL error | warning | notice | info | debug\n"
    "                        (overrides node.log_level)\n"
    "  -V, --version         print the version and exit\n"
    "  -h, --help            print this help and exit\n"
    "\n"
    "Signals: SIGINT/SIGTERM shut down cleanly; SIGHUP reloads the configuration\n"
    "(what needs a restart is logged).\n"
    "Environment: SOVMESH_STATE_DIR (default state directory),\n"
    "SOVMESH_PLUGIN_PATH (extra plugin directories, colon-separated).\n"
    "Documentation: docs/user-guide.md, docs/configuration.md.\n";

extern const char *config_default_text(void);

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"config", required_argument, NULL, 'c'},
	    {"check-config", no_argument, NULL, 'k'},
	    {"print-default-config", no_argument, NULL, 'P'},
	    {"log-level", required_argument, NULL, 'l'},
	    {"version", no_argument, NULL, 'V'},
	    {"help", no_argument, NULL, 'h'},
	    {0},
	};
	daemon_options o = {.log_level = -1};
	int opt;
	while ((opt = getopt_long(argc, argv, "c:l:Vh", opts, NULL)) != -1) {
		switch (opt) {
		case 'c':
			o.config_path = optarg;
			break;
		case 'k':
			o.check_only = 1;
			break;
		case 'P':
			fputs(config_default_text(), stdout);
			return 0;
		case 'l':
			o.log_level = log_level_parse(optarg);
			if (o.log_level < 0) {
				fprintf(stderr,
				        "sovmeshd: --log-level: '%s' is not one of error, warning, "
				        "notice, info, debug\n",
				        optarg);
				return 2;
			}
			break;
		case 'V':
			printf("sovmeshd %s (plugin ABI %d.%d)\n", SOVMESH_VERSION,
			       SOVMESH_ABI_MAJOR, SOVMESH_ABI_MINOR);
			return 0;
		case 'h':
			fputs(usage_text, stdout);
			return 0;
		default:
			fputs(usage_text, stderr);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "sovmeshd: unexpected argument '%s' (see --help)\n", argv[optind]);
		return 2;
	}
	return daemon_run(&o);
}
