"""The nginx configuration of the routing model: one ``http`` body (``routes.conf``).

Modelled on ingress-nginx's template (``rootfs/etc/nginx/template/nginx.tmpl``) without its
Lua balancer: upstreams list the endpoints themselves, so an endpoint change is a reload.

How the Ingress semantics become nginx locations (``updateServerLocations`` and
``buildLocation`` in ingress-nginx):

- ``Exact /foo``                -> ``location = "/foo"``
- ``Prefix /foo`` (or ``/foo/``)  -> ``location "/foo/"`` plus ``location = "/foo"``: nginx picks
  an exact match first, then the longest prefix, which is the spec's element-wise rule
  (``/foobar`` matches neither); ``Prefix /`` -> ``location "/"``
- ``ImplementationSpecific /foo`` -> ``location "/foo"`` (nginx's string prefix)

When two produce the same nginx location, Exact wins over Prefix, Prefix over
ImplementationSpecific. Wildcard hosts become ingress-nginx's regex server names
(``*.foo.com`` -> ``~^(?<subdomain>[\\w-]+)\\.foo\\.com$``: one label only).
HTTPS is served for the hosts an Ingress lists in ``spec.tls`` (its Secret's certificate, or
the default one) and by the catch-all server (default certificate). ingress-nginx also answers
HTTPS for every other host with its default certificate; here they listen on HTTP only,
because in nginx every server with a certificate builds its own SSL context (about 4 ms each
with OpenSSL 3.0): 1,000 hosts made ``nginx -t``, and again the reload, take 4 s instead of
0.2 s. (ingress-nginx avoids that with certificates loaded by Lua.) The output is
deterministic: same model, same text, so the controller reloads only when something changed.
"""

from __future__ import annotations

from knetlab.addons.ingress.model import CATCH_ALL, PATH_TYPES, Backend, Location, Routing, Server

HTTP_SETTINGS = """\
# written by knetlab's ingress controller: do not edit (rewritten on every change)
map $http_upgrade $connection_upgrade {
    default upgrade;
    ''      '';
}
server_names_hash_bucket_size 128;
server_names_hash_max_size 65536;
variables_hash_bucket_size 256;
ssl_protocols TLSv1.2 TLSv1.3;
ssl_session_cache shared:SSL:10m;
proxy_http_version 1.1;
proxy_connect_timeout 5s;
proxy_next_upstream error timeout;
proxy_buffering on;

# ingress-nginx's headers (use-forwarded-headers: false): the client as nginx sees it
proxy_set_header Host               $http_host;
proxy_set_header Upgrade            $http_upgrade;
proxy_set_header Connection         $connection_upgrade;
proxy_set_header X-Request-ID       $request_id;
proxy_set_header X-Real-IP          $remote_addr;
proxy_set_header X-Forwarded-For    $remote_addr;
proxy_set_header X-Forwarded-Host   $http_host;
proxy_set_header X-Forwarded-Port   $server_port;
proxy_set_header X-Forwarded-Proto  $scheme;
proxy_set_header X-Forwarded-Scheme $scheme;
proxy_set_header X-Scheme           $scheme;
proxy_set_header Proxy              "";
"""


def server_name(host: str) -> str:
    if host == CATCH_ALL:
        return "_"
    if host.startswith("*."):
        return r"~^(?<subdomain>[\w-]+)\." + host[2:].replace(".", r"\.") + "$"
    return host


def nginx_locations(srv: Server) -> list[tuple[str, Location]]:
    """(nginx location argument, Location) pairs; the first claim of an argument wins, in
    the order Exact, Prefix, ImplementationSpecific."""
    claimed: dict[str, Location] = {}
    for ptype in PATH_TYPES:
        for loc in srv.locations:
            if loc.path_type != ptype:
                continue
            if ptype == "Exact":
                args = [f'= "{loc.path}"']
            elif ptype == "Prefix":
                args = ['"/"'] if loc.path == "/" else [f'"{loc.path}/"', f'= "{loc.path}"']
            else:
                args = [f'"{loc.path}"']
            for arg in args:
                claimed.setdefault(arg, loc)
    return sorted(claimed.items())


def _proxy(b: Backend | None, indent: str) -> str:
    if b is None:
        return f"{indent}return 404;\n"
    if not b.endpoints:
        return f"{indent}# {b.problem}\n{indent}return 503;\n"
    return f"{indent}proxy_pass http://{b.upstream};\n"


def render_server(srv: Server, http_port: int, https_port: int, cert_dir: str,
                  default_cert: str) -> str:
    default = " default_server" if srv.host == CATCH_ALL else ""
    out = [f"server {{\n    server_name {server_name(srv.host)};\n",
           f"    listen {http_port}{default};\n"]
    if srv.tls or srv.host == CATCH_ALL:
        cert = f"{cert_dir}/{srv.cert}" if srv.cert else default_cert
        out.append(f"    listen {https_port} ssl{default};\n"
                   f'    ssl_certificate     "{cert}";\n    ssl_certificate_key "{cert}";\n')
    if srv.ingresses:
        out.append(f"    # from {', '.join(srv.ingresses)}\n")
    if srv.tls and srv.ssl_redirect:
        port = "" if https_port == 443 else f":{https_port}"
        out.append(f"    if ($scheme = http) {{\n        return 308 https://$host{port}"
                   "$request_uri;\n    }\n")
    locs = nginx_locations(srv)
    for arg, loc in locs:
        out.append(f"    location {arg} {{\n        # {loc.path_type} {loc.path} from "
                   f"{loc.ingress}\n{_proxy(loc.backend, '        ')}    }}\n")
    if not any(arg == '"/"' for arg, _ in locs):
        why = f"the default backend of {srv.default_from}" if srv.default else \
            "no default backend"
        out.append(f"    location / {{\n        # {why}\n"
                   f"{_proxy(srv.default, '        ')}    }}\n")
    out.append("}\n")
    return "".join(out)


def render(routing: Routing, *, http_port: int, https_port: int, cert_dir: str,
           default_cert: str, health_port: int | None = None) -> str:
    parts = [HTTP_SETTINGS]
    if health_port:  # the pod's readiness: served once the controller's routes are loaded
        parts.append(f"\nserver {{\n    listen {health_port};\n    access_log off;\n"
                     "    location = /healthz {\n        return 200 \"ok\\n\";\n    }\n"
                     "    location / {\n        return 404;\n    }\n}\n")
    for name, b in sorted(routing.upstreams().items()):
        servers = "".join(f"    server {ep} max_fails=0;\n" for ep in b.endpoints)
        parts.append(f"\nupstream {name} {{\n    # {b.describe()}\n{servers}"
                     "    keepalive 32;\n}\n")
    for host in sorted(routing.servers, key=lambda h: (h != CATCH_ALL, h)):
        parts.append("\n" + render_server(routing.servers[host], http_port, https_port,
                                          cert_dir, default_cert))
    return "".join(parts)
