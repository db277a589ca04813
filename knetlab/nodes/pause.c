/* A pod's pause: holds the pod's network namespace for as long as it runs.
 *
 * Usage: pause mininet:<pod>   (the argument only names it: `knetlab clean` recognises the
 * process by it; see knetlab/nodes/pod.py)
 *
 * Makes a new network namespace for itself (unshare(2)), writes "ready\n" once it is in
 * it (so /proc/PID/ns/net is the pod's from then on), closes stdout, and blocks reading
 * stdin until EOF (the pod's process closes it) or a signal (SIGHUP from knetlab) ends it.
 *
 * Why not `unshare --net sh -s`, what it replaces: two programs exec'd per pod (unshare,
 * then sh) cost ~1.7 ms of CPU, this one ~0.9 (measured here, 100 pods): a pod's every
 * other step is already cheaper than a plain Mininet host's, and this was the largest.
 * Built by scripts/setup.sh, like the thin CNI client.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    char buf[512];
    ssize_t n;

    if (argc != 2) {
        fprintf(stderr, "usage: %s mininet:<pod>\n", argv[0]);
        return 2;
    }
    if (unshare(CLONE_NEWNET) != 0) {
        fprintf(stderr, "pause: unshare(CLONE_NEWNET): %s\n", strerror(errno));
        return 1;
    }
    if (write(STDOUT_FILENO, "ready\n", 6) != 6) {
        return 1;
    }
    close(STDOUT_FILENO);
    do {
        n = read(STDIN_FILENO, buf, sizeof buf);
    } while (n > 0 || (n < 0 && errno == EINTR));
    return 0;
}
