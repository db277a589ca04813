/*
 * knetlab's thin CNI plugin: bin/calico, bin/ovs and bin/weave-net are links to the binary
 * built from this file (scripts/setup.sh); the name it is run by is the CNI type. It hands
 * the invocation to the node's agent for that type (knetlab/cni/agent.py), which runs the
 * plugin's Python code in a warm process. A C client starts in ~0.5 ms of CPU, Perl in
 * ~1.5, Python in ~9-10: on the planes with an agent that was most of a pod's CNI cost.
 *
 * Wire format (agent.py): "<n>\n", n bytes of "KEY=VALUE\0" per CNI_* variable (sorted),
 * then the network configuration up to EOF (this side shuts down its sending half). The
 * answer: the exit code as one digit, then what the plugin prints.
 *
 * Where no agent listens in this network namespace (abstract sockets belong to their
 * namespace), the whole plugin runs here in Python instead (python3 -S), stdin unread.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

extern char **environ;

/* CNI type -> the plugin module; as agent.py's PLUGINS (others: knetlab.cni.plugins.TYPE) */
static const char *module_of(const char *type)
{
    if (!strcmp(type, "calico")) return "knetlab.cni.plugins.calico";
    if (!strcmp(type, "ovs")) return "knetlab.cni.plugins.ovs";
    if (!strcmp(type, "weave-net")) return "knetlab.cni.plugins.bridge";
    return NULL;
}

struct buf { char *data; size_t len, cap; };

static void put(struct buf *b, const char *data, size_t len)
{
    if (b->len + len > b->cap) {
        while (b->len + len > b->cap) b->cap = b->cap ? 2 * b->cap : 65536;
        if (!(b->data = realloc(b->data, b->cap))) exit(1);
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
}

static int read_all(int fd, struct buf *b)
{
    char chunk[65536];
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof chunk);
        if (n > 0) put(b, chunk, (size_t)n);
        else if (n == 0) return 0;
        else if (errno != EINTR) return -1;
    }
}

/* send, not write: an agent that dies mid-request must not kill this client with SIGPIPE
 * before it can print the spec's error */
static int send_all(int fd, const char *data, size_t len)
{
    while (len) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The configuration's cniVersion, for an error object of the version asked for. */
static void version_of(const struct buf *conf, char *out, size_t size)
{
    snprintf(out, size, "1.1.0");
    char *text = strndup(conf->data ? conf->data : "", conf->len);
    char *p = text ? strstr(text, "\"cniVersion\"") : NULL;
    if (p && (p = strchr(p + 12, '"'))) {
        size_t n = strspn(p + 1, "0123456789.");
        if (n && n < size && p[1 + n] == '"') snprintf(out, size, "%.*s", (int)n, p + 1);
    }
    free(text);
}

/* No agent: run the plugin's Python module here (the repository is three levels above
 * this binary, knetlab/cni/agent-client). */
static int run_in_python(const char *type)
{
    char exe[4096], code[512];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        for (int up = 0; up < 3; up++) {
            char *slash = strrchr(exe, '/');
            if (slash) *slash = 0;
        }
        const char *module = module_of(type);
        if (module)
            snprintf(code, sizeof code, "import sys; sys.path.insert(0, sys.argv[1]); "
                     "from %s import main; main()", module);
        else
            snprintf(code, sizeof code, "import sys; sys.path.insert(0, sys.argv[1]); "
                     "from knetlab.cni.plugins.%s import main; main()", type);
        execl("/usr/bin/python3", "python3", "-S", "-c", code, exe, (char *)NULL);
    }
    printf("{\"cniVersion\": \"1.1.0\", \"code\": 999, \"msg\": \"%s: cannot run python3: %s\"}",
           type, strerror(errno));
    return 1;
}

int main(int argc, char **argv)
{
    (void)argc;
    const char *type = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    int len = snprintf(addr.sun_path + 1, sizeof addr.sun_path - 1, "knetlab-%s-cni", type);
    int agent = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (agent < 0 || connect(agent, (struct sockaddr *)&addr,
                             (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + len)) < 0)
        return run_in_python(type);

    struct buf conf = {0}, request = {0}, answer = {0};
    if (read_all(0, &conf) < 0) conf.len = 0;
    char *vars[512];
    size_t count = 0, env_len = 0;
    for (char **e = environ; *e && count < 512; e++)
        if (!strncmp(*e, "CNI_", 4)) {
            vars[count++] = *e;
            env_len += strlen(*e) + 1;
        }
    qsort(vars, count, sizeof *vars, by_name);
    char head[32];
    put(&request, head, (size_t)snprintf(head, sizeof head, "%zu\n", env_len));
    for (size_t i = 0; i < count; i++) put(&request, vars[i], strlen(vars[i]) + 1);
    if (conf.len) put(&request, conf.data, conf.len);
    if (send_all(agent, request.data, request.len) == 0) shutdown(agent, SHUT_WR);
    read_all(agent, &answer);
    if (!answer.len || answer.data[0] < '0' || answer.data[0] > '9') {
        /* the agent went away mid-invocation: say so, as the spec's error */
        char version[32];
        version_of(&conf, version, sizeof version);
        printf("{\"cniVersion\": \"%s\", \"code\": 11, \"msg\": \"%s: the node's CNI agent "
               "ended without an answer\", \"details\": \"try again; see its log "
               "(%s-cni.log)\"}", version, type, type);
        return 1;
    }
    fwrite(answer.data + 1, 1, answer.len - 1, stdout);
    return answer.data[0] == '0' ? 0 : 1;
}
