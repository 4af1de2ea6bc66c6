"""Drop `ports` from the services that use the host's network, in a rendered compose file
(`compose -f docker-compose.yml -f deploy/local/compose.override.yml config`): stdin to stdout.

docker-compose v1 (Debian's) refuses to create such a container ("host" network_mode is
incompatible with port_bindings), and an override file cannot remove a list entry there
(`!reset` is compose v2.18+ only). On the host network the API listens on the host already,
so the published port has no meaning. Runs in the optishear image (PyYAML comes with it).
"""

import sys

import yaml

config = yaml.safe_load(sys.stdin)
for name, service in config.get("services", {}).items():
    if service.get("network_mode") == "host" and service.pop("ports", None):
        sys.stderr.write(f"host-network: {name}: published ports dropped\n")
yaml.safe_dump(config, sys.stdout, sort_keys=False)
