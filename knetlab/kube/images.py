"""The built-in container images: an image name maps to a program of this machine.

Nothing is pulled in knetlab. A container's image selects an entry of ``IMAGES``, which
says what the image's ENTRYPOINT and CMD are and which files it needs in the pod's root
(the kubelet runs every container with an overlay of the host's ``/`` as its root, so
every host binary exists in the pod; it writes ``ImageRun.files`` and creates
``ImageRun.dirs`` there before it starts the process).

Kubernetes semantics for ``command`` and ``args``: ``command`` replaces the ENTRYPOINT
(and drops the CMD), ``args`` replace the CMD; args alone run ENTRYPOINT + args.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from knetlab.errors import KnetlabError

#: PATH of every built-in image; /knetlab-bin holds knetlab's own programs (agnhost)
BIN_DIR = "/knetlab-bin"
PATH = f"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{BIN_DIR}"

NGINX_CONF = "/etc/knetlab-nginx/nginx.conf"
NGINX_STATE = "/var/lib/knetlab-nginx"
#: the real image's document root: users mount ConfigMaps there and edit index.html
NGINX_HTML = "/usr/share/nginx/html"


class UnknownImage(KnetlabError):  # noqa: N818 - the kubelet's contract names it
    """The image is not one knetlab builds in; the kubelet reports ErrImagePull with this."""

    def __init__(self, image: str) -> None:
        self.image = image
        known = ", ".join(img.pattern for img in IMAGES)
        super().__init__(f'image "{image}" is not built into knetlab; images that exist: {known}')


@dataclass
class ImageRun:
    """What the kubelet does to run one container of an image."""

    argv: list[str]                 # what to exec (argv[0] absolute when it could be found)
    env: dict[str, str] = field(default_factory=dict)    # the pod's env wins over these
    files: dict[str, str] = field(default_factory=dict)  # pod-root path -> content
    executable: list[str] = field(default_factory=list)  # which of ``files`` get mode 0755
    dirs: list[str] = field(default_factory=list)        # pod-root dirs to create (0755)


@dataclass(frozen=True)
class Image:
    """One built-in image: the repositories it answers to and what it runs."""

    pattern: str                    # shown in errors and docs
    repositories: tuple[str, ...]   # normalized repository names (no tag, no docker.io/library)
    runs: str                       # one line for docs: what the image runs
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    #: files and dirs the image needs in the pod root: (pod_name, ports) -> ImageRun extras
    extras: Callable[[str, list[int]], ImageRun] | None = None
    #: rewrites ``args`` when they run without a command (an image's entrypoint script)
    args_shim: Callable[[list[str]], list[str]] | None = None


# --- agnhost ---------------------------------------------------------------------------

def agnhost_wrapper() -> str:
    """The ``/agnhost`` program: a shell wrapper around this venv's Python implementation.

    ``-P`` keeps the container's working directory off sys.path."""
    return (f"#!/bin/sh\n# knetlab's agnhost (the package knetlab.kube.agnhost)\n"
            f'exec {shlex.quote(sys.executable)} -P -m knetlab.kube.agnhost "$@"\n')


def _agnhost_files(pod_name: str, ports: list[int]) -> ImageRun:
    wrapper = agnhost_wrapper()
    paths = ["/agnhost", f"{BIN_DIR}/agnhost"]
    return ImageRun(argv=[], files=dict.fromkeys(paths, wrapper), executable=paths,
                    dirs=[BIN_DIR])


# --- nginx -----------------------------------------------------------------------------

WELCOME = """<!DOCTYPE html>
<html>
<head>
<title>Welcome to nginx!</title>
<style>
html {{ color-scheme: light dark; }}
body {{ width: 35em; margin: 0 auto;
font-family: Tahoma, Verdana, Arial, sans-serif; }}
</style>
</head>
<body>
<h1>Welcome to nginx!</h1>
<p>If you see this page, the nginx web server is successfully installed and
working. Further configuration is required.</p>

<p>For online documentation and support please refer to
<a href="http://nginx.org/">nginx.org</a>.<br/>
Commercial support is available at
<a href="http://nginx.com/">nginx.com</a>.</p>

<p><em>Thank you for using nginx.</em></p>
<p>pod: {pod}</p>
</body>
</html>
"""

_NGINX_TEMP = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def nginx_conf(pod_name: str, ports: list[int], *, state: str = NGINX_STATE,
               html: str = NGINX_HTML) -> str:
    """nginx.conf of the nginx image: every containerPort, logs to the container's output.

    ``daemon off;`` comes from the command line (``-g``), as in the real image."""
    listens = "".join(f"        listen {p};\n" for p in sorted(set(ports or [80])))
    temps = "".join(f"    {t}_temp_path {state}/{t};\n" for t in _NGINX_TEMP)
    return f"""# written by knetlab for the nginx image of pod {pod_name}
user root;
worker_processes 1;
pid {state}/nginx.pid;
error_log /dev/stderr notice;

events {{
    worker_connections 1024;
}}

http {{
    types {{
        text/html html htm;
        text/css css;
        application/javascript js;
        application/json json;
        text/plain txt;
    }}
    default_type application/octet-stream;
    access_log /dev/stdout;
    sendfile on;
    keepalive_timeout 65;
{temps}
    server {{
{listens}        server_name localhost;
        root {html};
        index index.html index.htm;

        location = /hostname {{
            default_type text/plain;
            return 200 "{pod_name}";
        }}
    }}
}}
"""


def _nginx_files(pod_name: str, ports: list[int]) -> ImageRun:
    return ImageRun(
        argv=[],
        files={NGINX_CONF: nginx_conf(pod_name, ports),
               f"{NGINX_HTML}/index.html": WELCOME.format(pod=pod_name)},
        dirs=[str(Path(NGINX_CONF).parent), NGINX_STATE, NGINX_HTML,
              *(f"{NGINX_STATE}/{t}" for t in _NGINX_TEMP)])


# --- curl --------------------------------------------------------------------------------

def _curl_entrypoint(args: list[str]) -> list[str]:
    """curlimages/curl's entrypoint.sh: a flag or a non-command first arg means curl."""
    if args[0].startswith("-") or not _which(args[0], {}):
        return ["curl", *args]
    return args


# --- coredns ------------------------------------------------------------------------------

def _coredns_files(pod_name: str, ports: list[int]) -> ImageRun:
    """``/coredns``: knetlab's cluster DNS program (unbound fed from the API), whose args
    the cluster DNS add-on writes into its Deployment (knetlab.addons.dns)."""
    wrapper = (f"#!/bin/sh\n# knetlab's cluster DNS (the package knetlab.addons.dns)\n"
               f'exec {shlex.quote(sys.executable)} -P -m knetlab.addons.dns.server "$@"\n')
    paths = ["/coredns", f"{BIN_DIR}/coredns"]
    return ImageRun(argv=[], files=dict.fromkeys(paths, wrapper), executable=paths,
                    dirs=[BIN_DIR])


# --- ingress-nginx ------------------------------------------------------------------------

def _ingress_nginx_files(pod_name: str, ports: list[int]) -> ImageRun:
    """``/nginx-ingress-controller``: knetlab's ingress controller and its nginx, whose args
    the ingress add-on writes into its DaemonSet (knetlab.addons.ingress)."""
    wrapper = (f"#!/bin/sh\n# knetlab's ingress-nginx (the package knetlab.addons.ingress)\n"
               f'exec {shlex.quote(sys.executable)} -P -m knetlab.addons.ingress.pod "$@"\n')
    paths = ["/nginx-ingress-controller", f"{BIN_DIR}/nginx-ingress-controller"]
    return ImageRun(argv=[], files=dict.fromkeys(paths, wrapper), executable=paths,
                    dirs=[BIN_DIR])


# --- the table ---------------------------------------------------------------------------

_SLEEP = ("sleep", "infinity")
_SHELL_RUNS = "the given command with the machine's tools (sh, curl, wget, dig, ip, ...)"

IMAGES: list[Image] = [
    Image("registry.k8s.io/e2e-test-images/agnhost:*",
          ("registry.k8s.io/e2e-test-images/agnhost", "k8s.gcr.io/e2e-test-images/agnhost",
           "gcr.io/kubernetes-e2e-test-images/agnhost", "agnhost"),
          "knetlab's agnhost (netexec, serve-hostname, connect, pause, porter, ...)",
          ("/agnhost",), ("pause",), extras=_agnhost_files),
    Image("nginx*", ("nginx", "registry.k8s.io/e2e-test-images/nginx", "nginxinc/nginx"),
          "Debian's nginx on every containerPort (80 by default), logs to stdout/stderr",
          (), ("/usr/sbin/nginx", "-e", "stderr", "-c", NGINX_CONF, "-g", "daemon off;"),
          extras=_nginx_files),
    Image("busybox*", ("busybox", "registry.k8s.io/e2e-test-images/busybox",
                       "registry.k8s.io/busybox", "k8s.gcr.io/busybox"),
          _SHELL_RUNS, (), _SLEEP),
    Image("alpine*", ("alpine",), _SHELL_RUNS, (), _SLEEP),
    Image("debian*", ("debian",), _SHELL_RUNS, (), _SLEEP),
    Image("ubuntu*", ("ubuntu",), _SHELL_RUNS, (), _SLEEP),
    Image("python*", ("python",), "the machine's python3 (or the given command)",
          (), ("python3",)),
    Image("curlimages/curl*", ("curlimages/curl",),
          "curl (args starting with a flag go to curl), or the given command",
          (), _SLEEP, args_shim=_curl_entrypoint),
    Image("registry.k8s.io/coredns/coredns:*",
          ("registry.k8s.io/coredns/coredns", "registry.k8s.io/coredns", "coredns/coredns",
           "k8s.gcr.io/coredns/coredns", "k8s.gcr.io/coredns"),
          "knetlab's cluster DNS: unbound serving the cluster domain, fed from the API",
          ("/coredns",), (), extras=_coredns_files),
    Image("registry.k8s.io/ingress-nginx/controller:*",
          ("registry.k8s.io/ingress-nginx/controller", "k8s.gcr.io/ingress-nginx/controller"),
          "knetlab's ingress-nginx: Debian's nginx fed by a controller watching the API",
          ("/nginx-ingress-controller",), (), extras=_ingress_nginx_files),
    Image("registry.k8s.io/pause*",
          ("registry.k8s.io/pause", "k8s.gcr.io/pause", "gcr.io/google-containers/pause",
           "pause"),
          "a process that sleeps until signalled", ("sleep", "infinity"), ()),
]


def repository(image: str) -> str:
    """The repository of an image reference: no tag, no digest, no docker.io/library/."""
    name = image.strip().lower().split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name = name[:colon]
    for prefix in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    return name.removeprefix("library/")


def lookup(image: str) -> Image:
    """The built-in image for an image reference, or UnknownImage."""
    repo = repository(image)
    for img in IMAGES:
        if repo in img.repositories:
            return img
    raise UnknownImage(image)


def container_argv(entrypoint: list[str], cmd: list[str], command: list[str] | None,
                   args: list[str] | None) -> list[str]:
    """Kubernetes' rule: command replaces ENTRYPOINT (dropping CMD), args replace CMD."""
    if command:
        return [*command, *(args or [])]
    return [*entrypoint, *(args if args else cmd)]


def _which(name: str, files: dict[str, str]) -> str | None:
    """Where PATH finds ``name`` in the pod root: the image's own files, else the host's."""
    for d in PATH.split(":"):
        if f"{d}/{name}" in files:
            return f"{d}/{name}"
    return shutil.which(name, path=PATH)


def resolve(image: str, command: list[str] | None, args: list[str] | None, *, pod_name: str,
            container_ports: list[int], run_dir: Path) -> ImageRun:
    """What to run for one container: argv, env, and the files the image needs.

    ``run_dir`` is the lab's run dir (no built-in image needs lab files yet). A bare
    argv[0] is looked up on PATH; when not found it stays bare, so the exec fails the
    way Kubernetes reports it (executable file not found in $PATH)."""
    img = lookup(image)
    run = img.extras(pod_name, list(container_ports)) if img.extras else ImageRun(argv=[])
    if not command and args and img.args_shim:
        argv = img.args_shim(list(args))
    else:
        argv = container_argv(list(img.entrypoint), list(img.cmd), command, args)
    if argv and "/" not in argv[0]:
        argv[0] = _which(argv[0], run.files) or argv[0]
    run.argv = argv
    run.env = {"PATH": PATH, **run.env}
    return run
