/* Integration-test harness: real redis-server, nutcracker and ringproxy
 * children on free loopback ports. Each child runs in its own session (so its
 * process group id is its pid), dies with the test process (PR_SET_PDEATHSIG)
 * and is recorded in a table that an atexit handler empties, so a failing or
 * interrupted test leaves no process and no temp dir behind. */
#include "harness.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Children alive at once in one test process; tests start a handful. */
#define HARNESS_MAX_CHILDREN 128
/* How long a child gets to answer after start, and to exit after a signal. */
#define HARNESS_START_TIMEOUT_MS 5000
#define HARNESS_STOP_TIMEOUT_MS  5000
/* harness_timeout_scale multiplies both (and whatever a test scales with
 * it): $HARNESS_TIMEOUT_SCALE for a slow tool such as valgrind, times
 * HARNESS_ASAN_SCALE under ASan, times how slow the machine measures. */
#define HARNESS_TIMEOUT_SCALE_MAX 100
/* ASan + UBSan at -O1 against the -O2 build: ASan alone costs about 2x
 * (its documented typical slowdown), UBSan and -O1 add to it. */
#define HARNESS_ASAN_SCALE 3
/* The speed probe: this many rounds take 20 ms on a quiet core of the
 * project's 2-vCPU development machine (35-100 ms there with other builds
 * and tests running beside). */
#define HARNESS_SPEED_PROBE_ROUNDS 10000000u
#define HARNESS_SPEED_PROBE_REF_MS 20
/* A machine measured slower than this is stalled, not slow: past it the
 * bounds stop stretching, so a hang still fails in minutes. */
#define HARNESS_MACHINE_SCALE_MAX 8
/* Attempts to start a server, each on a new port: another process may take a
 * port between our bind check and the server's own bind. */
#define HARNESS_START_ATTEMPTS 3
/* Lowest port handed out; the top is just below the kernel's ephemeral range
 * so that outgoing connections never occupy a port we are about to use. */
#define HARNESS_PORT_MIN          20000
#define HARNESS_PORT_FALLBACK_MAX 32767

#define NUTCRACKER_BIN     "/usr/sbin/nutcracker"
#define REDIS_SERVER_BIN   "redis-server"
#define REDIS_SENTINEL_BIN "redis-sentinel"

/* A running child: enough to stop it and clean up after it at exit even if
 * the test's harness_proc is gone (stack frame left by a failed assert). */
typedef struct harness_child {
    pid_t pid;     /* 0: free slot */
    char dir[256]; /* its temp dir, removed once it is stopped */
} harness_child;

static struct {
    harness_child children[HARNESS_MAX_CHILDREN];
    int initialized; /* atexit + signal handlers installed */
    pid_t owner;     /* the test process; its forks must not clean up */
    int port_min;    /* range harness_free_port draws from */
    int port_max;
    int port_next; /* next candidate; only ever moves forward */
    int ports_left;
} harness;

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The test process itself runs under AddressSanitizer (`make asan`, which
 * builds the proxy the same way): ASan's shadow checks and quarantine make
 * both several times slower than the build the bounds were tuned on. */
#if defined(__SANITIZE_ADDRESS__)
#define HARNESS_UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HARNESS_UNDER_ASAN 1
#endif
#endif
#ifndef HARNESS_UNDER_ASAN
#define HARNESS_UNDER_ASAN 0
#endif

/* $HARNESS_TIMEOUT_SCALE, 1 to HARNESS_TIMEOUT_SCALE_MAX. */
static int env_scale(void)
{
    const char *text = getenv("HARNESS_TIMEOUT_SCALE");
    int scale = text != NULL ? atoi(text) : 1;
    if (scale < 1) {
        scale = 1;
    }
    if (scale > HARNESS_TIMEOUT_SCALE_MAX) {
        scale = HARNESS_TIMEOUT_SCALE_MAX;
    }
    return scale;
}

/* A dependent chain of multiplies: it cannot be vectorised or overlapped, so
 * its wall time is the speed of one core as this process gets it (a slower
 * CPU, or a fair share of one on a busy machine). */
static uint64_t speed_probe_work(uint64_t rounds)
{
    uint64_t x = 0x9e3779b97f4a7c15u;
    for (uint64_t i = 0; i < rounds; i++) {
        x ^= x >> 29;
        x *= 0xbf58476d1ce4e5b9u;
        x ^= i;
    }
    return x;
}

/* How many times slower than the reference machine this one is now: the
 * probe's wall time against its reference time, and the 1-minute load
 * average per CPU (a busy machine shares each CPU among that many tasks).
 * The larger of the two, rounded up, between 1 and HARNESS_MACHINE_SCALE_MAX. */
static int machine_scale(void)
{
    long long start = now_ms();
    volatile uint64_t sink = speed_probe_work(HARNESS_SPEED_PROBE_ROUNDS);
    (void)sink;
    long long took = now_ms() - start;
    int scale = (int)((took + HARNESS_SPEED_PROBE_REF_MS - 1) / HARNESS_SPEED_PROBE_REF_MS);

    double load = 0;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    FILE *f = fopen("/proc/loadavg", "r");
    if (f != NULL) {
        if (fscanf(f, "%lf", &load) != 1) {
            load = 0;
        }
        fclose(f);
    }
    if (cpus > 0) {
        int by_load = (int)(load / (double)cpus + 0.999);
        scale = by_load > scale ? by_load : scale;
    }
    if (scale < 1) {
        return 1;
    }
    return scale > HARNESS_MACHINE_SCALE_MAX ? HARNESS_MACHINE_SCALE_MAX : scale;
}

int harness_timeout_scale(void)
{
    /* Measured once per test process: the bounds of one run must agree with
     * each other, and the probe costs tens of milliseconds. */
    static int scale;
    if (scale == 0) {
        const char *automatic = getenv("HARNESS_TIMEOUT_AUTO");
        int machine = automatic != NULL && strcmp(automatic, "0") == 0 ? 1 : machine_scale();
        int asan = HARNESS_UNDER_ASAN ? HARNESS_ASAN_SCALE : 1;
        scale = env_scale() * asan * machine;
        if (scale > HARNESS_TIMEOUT_SCALE_MAX) {
            scale = HARNESS_TIMEOUT_SCALE_MAX;
        }
        if (scale > 1) {
            fprintf(stderr,
                    "harness: time bounds x%d (HARNESS_TIMEOUT_SCALE %d, ASan %d, machine %d)\n",
                    scale, env_scale(), asan, machine);
        }
    }
    return scale;
}

static int start_timeout_ms(void)
{
    return HARNESS_START_TIMEOUT_MS * harness_timeout_scale();
}

static int stop_timeout_ms(void)
{
    return HARNESS_STOP_TIMEOUT_MS * harness_timeout_scale();
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    if (remove(path) == -1 && errno != ENOENT) {
        fprintf(stderr, "harness: cannot remove %s: %s\n", path, strerror(errno));
    }
    return 0;
}

/* Removes a temp dir made by make_dir, unless HARNESS_KEEP_DIRS is set (to
 * read the logs of a failed run). */
static void remove_dir(const char *dir)
{
    if (dir[0] == '\0' || strncmp(dir, "/tmp/", 5) != 0) {
        return;
    }
    if (getenv("HARNESS_KEEP_DIRS") != NULL) {
        fprintf(stderr, "harness: keeping %s\n", dir);
        return;
    }
    nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Kills the whole process group of a child; safe in a signal handler. */
static void kill_group(pid_t pid)
{
    if (pid > 0) {
        kill(-pid, SIGKILL);
        kill(pid, SIGKILL);
    }
}

static void cleanup_at_exit(void)
{
    if (getpid() != harness.owner) {
        return;
    }
    for (int i = 0; i < HARNESS_MAX_CHILDREN; i++) {
        harness_child *c = &harness.children[i];
        if (c->pid == 0) {
            continue;
        }
        kill_group(c->pid);
        waitpid(c->pid, NULL, 0);
        remove_dir(c->dir);
        c->pid = 0;
    }
}

/* SIGINT/SIGTERM on the test process: take the children down, then die of
 * the same signal. */
static void on_fatal_signal(int sig)
{
    if (getpid() != harness.owner) {
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    /* Only async-signal-safe calls here: kill, fork, execve, waitpid. */
    char *rm_argv[HARNESS_MAX_CHILDREN + 3] = {"/bin/rm", "-rf"};
    int n = 2;
    for (int i = 0; i < HARNESS_MAX_CHILDREN; i++) {
        harness_child *c = &harness.children[i];
        if (c->pid != 0) {
            kill_group(c->pid);
            if (strncmp(c->dir, "/tmp/", 5) == 0) {
                rm_argv[n++] = c->dir;
            }
        }
    }
    rm_argv[n] = NULL;
    if (n > 2 && getenv("HARNESS_KEEP_DIRS") == NULL) {
        pid_t rm = fork();
        if (rm == 0) {
            char *envp[] = {NULL};
            execve(rm_argv[0], rm_argv, envp);
            _exit(127);
        }
        if (rm > 0) {
            waitpid(rm, NULL, 0);
        }
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

static int ephemeral_port_min(void)
{
    int lo = 0, hi = 0;
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    if (f == NULL) {
        return 0;
    }
    if (fscanf(f, "%d %d", &lo, &hi) != 2) {
        lo = 0;
    }
    fclose(f);
    return lo;
}

static void harness_init(void)
{
    if (harness.initialized) {
        return;
    }
    harness.initialized = 1;
    harness.owner = getpid();
    atexit(cleanup_at_exit);
    signal(SIGINT, on_fatal_signal);
    signal(SIGTERM, on_fatal_signal);
    /* A peer closing on us is a test outcome, not a reason to die. */
    signal(SIGPIPE, SIG_IGN);

    int eph = ephemeral_port_min();
    harness.port_min = HARNESS_PORT_MIN;
    harness.port_max = eph > HARNESS_PORT_MIN + 2000 ? eph - 1 : HARNESS_PORT_FALLBACK_MAX;
    int span = harness.port_max - harness.port_min + 1;
    /* Spread the starting points of processes with close pids (tests run
     * in parallel) far apart: each uses a handful of consecutive ports. */
    harness.port_next =
        harness.port_min + (int)(((uint32_t)getpid() * 2654435761u) % (uint32_t)span);
    harness.ports_left = span;
}

static int register_child(pid_t pid, const char *dir)
{
    for (int i = 0; i < HARNESS_MAX_CHILDREN; i++) {
        harness_child *c = &harness.children[i];
        if (c->pid == 0) {
            c->pid = pid;
            snprintf(c->dir, sizeof(c->dir), "%s", dir);
            return 0;
        }
    }
    fprintf(stderr, "harness: more than %d children\n", HARNESS_MAX_CHILDREN);
    return -1;
}

static void unregister_child(pid_t pid)
{
    for (int i = 0; i < HARNESS_MAX_CHILDREN; i++) {
        if (harness.children[i].pid == pid) {
            harness.children[i].pid = 0;
            harness.children[i].dir[0] = '\0';
        }
    }
}

/* 1 when port can be bound on 127.0.0.1. With reuse set, connections of a
 * previous listener lingering in TIME_WAIT do not count, as for servers that
 * set SO_REUSEADDR (redis-server, ringproxy) restarted on their port. */
static int port_is_free(int port, int reuse)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        return 0;
    }
    if (reuse) {
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ok = bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    return ok;
}

int harness_free_port(void)
{
    harness_init();
    while (harness.ports_left > 0) {
        int port = harness.port_next;
        harness.port_next = port == harness.port_max ? harness.port_min : port + 1;
        harness.ports_left--;
        if (port_is_free(port, 0)) {
            return port;
        }
    }
    fprintf(stderr, "harness: no free port left in %d..%d\n", harness.port_min, harness.port_max);
    abort();
}

static int make_dir(harness_proc *p, const char *kind)
{
    char tmpl[sizeof(p->dir)];
    snprintf(tmpl, sizeof(tmpl), "/tmp/ringproxy-test-%s-XXXXXX", kind);
    if (mkdtemp(tmpl) == NULL) {
        fprintf(stderr, "harness: mkdtemp %s: %s\n", tmpl, strerror(errno));
        return -1;
    }
    snprintf(p->dir, sizeof(p->dir), "%s", tmpl);
    return 0;
}

static int write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        fprintf(stderr, "harness: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t len = strlen(text);
    int ok = fwrite(text, 1, len, f) == len;
    if (fclose(f) != 0) {
        ok = 0;
    }
    return ok ? 0 : -1;
}

/* Returns a malloc'd copy of text with every "%PORT%" replaced by port. */
static char *replace_port(const char *text, int port)
{
    static const char token[] = "%PORT%";
    char num[16];
    snprintf(num, sizeof(num), "%d", port);
    size_t count = 0;
    for (const char *s = strstr(text, token); s != NULL; s = strstr(s + 1, token)) {
        count++;
    }
    size_t len = strlen(text) + count * strlen(num) + 1;
    char *out = malloc(len);
    if (out == NULL) {
        return NULL;
    }
    char *w = out;
    const char *r = text;
    for (const char *s = strstr(r, token); s != NULL; s = strstr(r, token)) {
        memcpy(w, r, (size_t)(s - r));
        w += s - r;
        memcpy(w, num, strlen(num));
        w += strlen(num);
        r = s + strlen(token);
    }
    strcpy(w, r);
    return out;
}

/* Forks and execs argv in a new session with stdin from /dev/null and
 * stdout + stderr appended to log, with RLIMIT_NOFILE lowered to nofile
 * when it is > 0. Records the child. Returns its pid or -1. */
static pid_t spawn(char *const argv[], const char *log, const char *dir, int nofile)
{
    harness_init();
    pid_t parent = getpid();
    fflush(NULL);
    pid_t pid = fork();
    if (pid == -1) {
        fprintf(stderr, "harness: fork: %s\n", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        setsid();
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) {
            _exit(127);
        }
        signal(SIGPIPE, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        int in = open("/dev/null", O_RDONLY);
        int out = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (in == -1 || out == -1) {
            _exit(127);
        }
        dup2(in, STDIN_FILENO);
        dup2(out, STDOUT_FILENO);
        dup2(out, STDERR_FILENO);
        if (in > STDERR_FILENO) {
            close(in);
        }
        if (out > STDERR_FILENO) {
            close(out);
        }
        if (nofile > 0) {
            struct rlimit lim;
            if (getrlimit(RLIMIT_NOFILE, &lim) == -1) {
                _exit(127);
            }
            lim.rlim_cur = (rlim_t)nofile;
            if (lim.rlim_max != RLIM_INFINITY && lim.rlim_max < lim.rlim_cur) {
                lim.rlim_cur = lim.rlim_max;
            }
            if (setrlimit(RLIMIT_NOFILE, &lim) == -1) {
                _exit(127);
            }
        }
        execvp(argv[0], argv);
        fprintf(stderr, "harness: exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    if (register_child(pid, dir) == -1) {
        kill_group(pid);
        waitpid(pid, NULL, 0);
        return -1;
    }
    return pid;
}

/* 1 while pid has not exited (it is not reaped here). */
static int child_alive(pid_t pid)
{
    siginfo_t info;
    memset(&info, 0, sizeof(info));
    if (waitid(P_PID, (id_t)pid, &info, WEXITED | WNOHANG | WNOWAIT) == -1) {
        return 0;
    }
    return info.si_pid == 0;
}

void harness_dump_log(const harness_proc *p, size_t max_bytes)
{
    FILE *f = fopen(p->log, "r");
    if (f == NULL) {
        return;
    }
    if (fseek(f, 0, SEEK_END) == 0) {
        long size = ftell(f);
        long from = size > (long)max_bytes ? size - (long)max_bytes : 0;
        fseek(f, from, SEEK_SET);
    }
    fprintf(stderr, "---- %s (pid %d, port %d) ----\n", p->log, (int)p->pid, p->port);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0) {
        fwrite(buf, 1, n, stderr);
    }
    fprintf(stderr, "---- end of %s ----\n", p->log);
    fclose(f);
}

/* 1 when pid itself holds the socket listening on 127.0.0.1:port (found via
 * /proc/net/tcp and the process's fds). A PING answer alone could come from
 * another test process's server that won a race for the same port while our
 * child failed to bind it. */
static int listens_on(pid_t pid, int port)
{
    FILE *f = fopen("/proc/net/tcp", "r");
    if (f == NULL) {
        return 0;
    }
    /* Two servers may listen on one port of two loopback addresses
     * (harness_redis_start_at): every listening socket on it counts. */
    char line[512];
    unsigned long inodes[8];
    int n = 0;
    while (n < 8 && fgets(line, sizeof(line), f) != NULL) {
        unsigned addr, lport, state;
        unsigned long ino;
        if (sscanf(line, " %*d: %x:%x %*x:%*x %x %*x:%*x %*x:%*x %*x %*u %*u %lu", &addr, &lport,
                   &state, &ino) == 4 &&
            (int)lport == port && state == 0x0A /* TCP_LISTEN */) {
            inodes[n++] = ino;
        }
    }
    fclose(f);
    if (n == 0) {
        return 0;
    }
    char dir_path[64];
    snprintf(dir_path, sizeof(dir_path), "/proc/%d/fd", (int)pid);
    DIR *dir = opendir(dir_path);
    if (dir == NULL) {
        return 0;
    }
    int found = 0;
    struct dirent *e;
    while (!found && (e = readdir(dir)) != NULL) {
        char fd_path[320], target[64];
        snprintf(fd_path, sizeof(fd_path), "%s/%s", dir_path, e->d_name);
        ssize_t len = readlink(fd_path, target, sizeof(target) - 1);
        if (len <= 0) {
            continue;
        }
        target[len] = '\0';
        for (int i = 0; i < n && !found; i++) {
            char want[64];
            snprintf(want, sizeof(want), "socket:[%lu]", inodes[i]);
            found = strcmp(target, want) == 0;
        }
    }
    closedir(dir);
    return found;
}

/* Waits until the child listens on its port and answers there: with PING
 * when ping is set, else by accepting a TCP connection. Fails at once if the
 * child exits. */
static int wait_ping_at(const char *ip, int port, int timeout_ms);

static int wait_ready(harness_proc *p, int ping, int timeout_ms)
{
    const char *ip = p->ip[0] ? p->ip : "127.0.0.1";
    long long deadline = now_ms() + timeout_ms;
    for (;;) {
        if (!child_alive(p->pid)) {
            return -1;
        }
        if (listens_on(p->pid, p->port)) {
            if (ping) {
                if (wait_ping_at(ip, p->port, 100) == 0) {
                    return 0;
                }
            } else {
                redisContext *c = redisConnectWithTimeout(ip, p->port, (struct timeval){0, 100000});
                int ok = c != NULL && c->err == 0;
                if (c != NULL) {
                    redisFree(c);
                }
                if (ok) {
                    return 0;
                }
            }
        }
        if (now_ms() >= deadline) {
            return -1;
        }
        sleep_ms(10);
    }
}

/* Stops a child that failed to start, shows its log, removes its dir. */
static void abandon(harness_proc *p, const char *what)
{
    fprintf(stderr, "harness: %s on port %d did not start\n", what, p->port);
    harness_dump_log(p, 4096);
    if (p->pid > 0) {
        harness_proc_stop(p, SIGKILL);
    } else {
        remove_dir(p->dir);
    }
    p->dir[0] = '\0';
}

/* Starts redis-server on p->port, as a replica of master_port when it is
 * not 0. */
static int redis_spawn_replica(harness_proc *p, int master_port)
{
    char port[16], master[16];
    snprintf(port, sizeof(port), "%d", p->port);
    snprintf(master, sizeof(master), "%d", master_port);
    snprintf(p->log, sizeof(p->log), "%s/redis.log", p->dir);
    char *argv[] = {REDIS_SERVER_BIN,
                    "--port",
                    port,
                    "--bind",
                    p->ip[0] ? p->ip : "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    p->dir,
                    "--daemonize",
                    "no",
                    NULL,
                    NULL,
                    NULL,
                    NULL};
    if (master_port) {
        size_t n = sizeof(argv) / sizeof(argv[0]) - 4;
        argv[n] = "--replicaof";
        argv[n + 1] = "127.0.0.1";
        argv[n + 2] = master;
    }
    p->pid = spawn(argv, p->log, p->dir, 0);
    if (p->pid == -1) {
        p->pid = 0;
        return -1;
    }
    if (wait_ready(p, 1, start_timeout_ms()) == -1) {
        abandon(p, "redis-server");
        return -1;
    }
    return 0;
}

static int redis_spawn(harness_proc *p)
{
    return redis_spawn_replica(p, 0);
}

int harness_redis_start(harness_proc *p)
{
    memset(p, 0, sizeof(*p));
    for (int attempt = 0; attempt < HARNESS_START_ATTEMPTS; attempt++) {
        if (make_dir(p, "redis") == -1) {
            return -1;
        }
        p->port = harness_free_port();
        if (redis_spawn(p) == 0) {
            return 0;
        }
    }
    return -1;
}

int harness_redis_start_at(harness_proc *p, const char *ip, int port)
{
    memset(p, 0, sizeof(*p));
    snprintf(p->ip, sizeof(p->ip), "%s", ip);
    if (make_dir(p, "redis") == -1) {
        return -1;
    }
    p->port = port;
    return redis_spawn(p);
}

int harness_redis_start_tls(harness_proc *p, const char *cert_dir, int auth_clients)
{
    memset(p, 0, sizeof(*p));
    char cert[400], key[400], ca[400];
    snprintf(cert, sizeof(cert), "%s/server.crt", cert_dir);
    snprintf(key, sizeof(key), "%s/server.key", cert_dir);
    snprintf(ca, sizeof(ca), "%s/ca.crt", cert_dir);
    for (int attempt = 0; attempt < HARNESS_START_ATTEMPTS; attempt++) {
        if (make_dir(p, "redis-tls") == -1) {
            return -1;
        }
        p->port = harness_free_port();
        char port[16];
        snprintf(port, sizeof(port), "%d", p->port);
        snprintf(p->log, sizeof(p->log), "%s/redis.log", p->dir);
        /* tls-cluster: MIGRATE (rebalancing) connects to the target over
         * TLS too. */
        char *argv[] = {REDIS_SERVER_BIN,
                        "--port",
                        "0",
                        "--tls-port",
                        port,
                        "--bind",
                        "127.0.0.1",
                        "--tls-cert-file",
                        cert,
                        "--tls-key-file",
                        key,
                        "--tls-ca-cert-file",
                        ca,
                        "--tls-auth-clients",
                        auth_clients ? "yes" : "no",
                        "--tls-cluster",
                        "yes",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        p->dir,
                        "--daemonize",
                        "no",
                        NULL};
        p->pid = spawn(argv, p->log, p->dir, 0);
        if (p->pid == -1) {
            p->pid = 0;
            return -1;
        }
        /* No PING in plain text: a TCP connection accepted is enough. */
        if (wait_ready(p, 0, start_timeout_ms()) == 0) {
            return 0;
        }
        abandon(p, "redis-server (TLS)");
    }
    return -1;
}

int harness_redis_restart(harness_proc *p)
{
    if (p->pid != 0) {
        fprintf(stderr, "harness: redis on port %d is still running\n", p->port);
        return -1;
    }
    if (make_dir(p, "redis") == -1) {
        return -1;
    }
    /* The port was just released by the stopped server; retry briefly in case
     * the kernel has not let go of it yet. */
    long long deadline = now_ms() + start_timeout_ms();
    while (!port_is_free(p->port, 1) && now_ms() < deadline) {
        sleep_ms(20);
    }
    return redis_spawn(p);
}

int harness_nutcracker_start(harness_proc *p, const char *yaml)
{
    memset(p, 0, sizeof(*p));
    for (int attempt = 0; attempt < HARNESS_START_ATTEMPTS; attempt++) {
        if (make_dir(p, "nutcracker") == -1) {
            return -1;
        }
        p->port = harness_free_port();
        int stats_port = harness_free_port();
        char conf[sizeof(p->dir) + 16];
        snprintf(conf, sizeof(conf), "%s/conf.yml", p->dir);
        snprintf(p->log, sizeof(p->log), "%s/nutcracker.log", p->dir);
        char *text = replace_port(yaml, p->port);
        if (text == NULL || write_file(conf, text) == -1) {
            free(text);
            remove_dir(p->dir);
            return -1;
        }
        free(text);
        char stats[16];
        snprintf(stats, sizeof(stats), "%d", stats_port);
        char *argv[] = {NUTCRACKER_BIN, "-c",        conf, "-s",   stats,
                        "-a",           "127.0.0.1", "-o", p->log, NULL};
        p->pid = spawn(argv, p->log, p->dir, 0);
        if (p->pid == -1) {
            p->pid = 0;
            remove_dir(p->dir);
            return -1;
        }
        if (wait_ready(p, 0, start_timeout_ms()) == 0) {
            return 0;
        }
        abandon(p, "nutcracker");
    }
    return -1;
}

int harness_ringproxy_start(harness_proc *p, const char *ini_text)
{
    return harness_ringproxy_start_nofile(p, ini_text, 0);
}

int harness_ringproxy_start_nofile(harness_proc *p, const char *ini_text, int nofile)
{
    memset(p, 0, sizeof(*p));
    p->nofile = nofile;
    const char *bin = getenv("RINGPROXY_BIN");
    if (bin == NULL || bin[0] == '\0') {
        bin = "./ringproxy";
    }
    if (access(bin, X_OK) == -1) {
        fprintf(stderr, "harness: ringproxy binary %s: %s (set RINGPROXY_BIN)\n", bin,
                strerror(errno));
        return -1;
    }
    for (int attempt = 0; attempt < HARNESS_START_ATTEMPTS; attempt++) {
        if (make_dir(p, "ringproxy") == -1) {
            return -1;
        }
        p->port = harness_free_port();
        char ini[sizeof(p->dir) + 16];
        snprintf(ini, sizeof(ini), "%s/proxy.ini", p->dir);
        snprintf(p->log, sizeof(p->log), "%s/ringproxy.log", p->dir);
        char *text = replace_port(ini_text, p->port);
        if (text == NULL || write_file(ini, text) == -1) {
            free(text);
            remove_dir(p->dir);
            return -1;
        }
        free(text);
        char *argv[] = {(char *)bin, "-c", ini, NULL};
        p->pid = spawn(argv, p->log, p->dir, p->nofile);
        if (p->pid == -1) {
            p->pid = 0;
            remove_dir(p->dir);
            return -1;
        }
        if (wait_ready(p, 1, start_timeout_ms()) == 0) {
            return 0;
        }
        abandon(p, "ringproxy");
    }
    return -1;
}

/* Waits up to timeout_ms for pid to exit, without reaping it. 0 once exited. */
static int wait_exit(pid_t pid, int timeout_ms)
{
    long long deadline = now_ms() + timeout_ms;
    while (child_alive(pid)) {
        if (now_ms() >= deadline) {
            return -1;
        }
        sleep_ms(5);
    }
    return 0;
}

/* Stops a child as harness_proc_stop does; its dir is removed only when
 * remove is set. */
static int stop_child(harness_proc *p, int sig, int remove);

int harness_proc_stop(harness_proc *p, int sig)
{
    return stop_child(p, sig, 1);
}

int harness_ringproxy_restart(harness_proc *p, int sig)
{
    if (p->pid <= 0) {
        fprintf(stderr, "harness: ringproxy on port %d is not running\n", p->port);
        return -1;
    }
    const char *bin = getenv("RINGPROXY_BIN");
    if (bin == NULL || bin[0] == '\0') {
        bin = "./ringproxy";
    }
    stop_child(p, sig, 0);
    char ini[sizeof(p->dir) + 16];
    snprintf(ini, sizeof(ini), "%s/proxy.ini", p->dir);
    /* The port was just released; the kernel may need a moment. */
    long long deadline = now_ms() + start_timeout_ms();
    while (!port_is_free(p->port, 1) && now_ms() < deadline) {
        sleep_ms(20);
    }
    char *argv[] = {(char *)bin, "-c", ini, NULL};
    p->pid = spawn(argv, p->log, p->dir, p->nofile);
    if (p->pid == -1) {
        p->pid = 0;
        remove_dir(p->dir);
        return -1;
    }
    if (wait_ready(p, 1, start_timeout_ms()) == -1) {
        abandon(p, "ringproxy (restarted)");
        return -1;
    }
    return 0;
}

static int stop_child(harness_proc *p, int sig, int remove)
{
    if (p->pid <= 0) {
        return -1;
    }
    pid_t pid = p->pid;
    kill(pid, sig);
    if (wait_exit(pid, stop_timeout_ms()) == -1) {
        fprintf(stderr, "harness: pid %d ignored signal %d for %d ms, killing it\n", (int)pid, sig,
                stop_timeout_ms());
        kill(pid, SIGKILL);
        wait_exit(pid, stop_timeout_ms());
    }
    /* The leader has exited but is not reaped, so its pid (= the group id)
     * cannot have been reused: anything it left in its group goes too. */
    kill(-pid, SIGKILL);
    int status = 0;
    pid_t r;
    while ((r = waitpid(pid, &status, 0)) == -1 && errno == EINTR) {
    }
    unregister_child(pid);
    if (remove) {
        remove_dir(p->dir);
    }
    p->pid = 0;
    return r == pid ? status : -1;
}

redisContext *harness_connect(int port)
{
    struct timeval tv = {2 * harness_timeout_scale(), 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (c == NULL) {
        return NULL;
    }
    if (c->err != 0 || redisSetTimeout(c, tv) != REDIS_OK) {
        redisFree(c);
        return NULL;
    }
    return c;
}

int harness_wait_ping(int port, int timeout_ms)
{
    return wait_ping_at("127.0.0.1", port, timeout_ms);
}

static int wait_ping_at(const char *ip, int port, int timeout_ms)
{
    long long deadline = now_ms() + timeout_ms;
    for (;;) {
        long long left = deadline - now_ms();
        if (left < 50) {
            left = 50;
        }
        struct timeval tv = {(time_t)(left / 1000), (suseconds_t)((left % 1000) * 1000)};
        redisContext *c = redisConnectWithTimeout(ip, port, tv);
        if (c != NULL && c->err == 0 && redisSetTimeout(c, tv) == REDIS_OK) {
            redisReply *r = redisCommand(c, "PING");
            /* NOAUTH also means the server is up and answering. */
            int ok =
                r != NULL && ((r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0) ||
                              (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOAUTH", 6) == 0));
            if (r != NULL) {
                freeReplyObject(r);
            }
            if (ok) {
                redisFree(c);
                return 0;
            }
        }
        if (c != NULL) {
            redisFree(c);
        }
        if (now_ms() >= deadline) {
            return -1;
        }
        sleep_ms(10);
    }
}

/* Appends printf output to a growing malloc'd string; NULL on failure. */
static char *append(char *s, size_t *len, const char *fmt, ...)
{
    if (s == NULL) {
        return NULL;
    }
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *grown = realloc(s, *len + (size_t)n + 1);
    if (grown == NULL) {
        free(s);
        return NULL;
    }
    va_start(ap, fmt);
    vsnprintf(grown + *len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    *len += (size_t)n;
    return grown;
}

char *harness_ini(const harness_proc *shards, size_t nshards, const char *extra_proxy_lines)
{
    size_t len = 0;
    char *ini = calloc(1, 1);
    ini = append(ini, &len, "[proxy]\nlisten = 127.0.0.1:%%PORT%%\n");
    if (extra_proxy_lines != NULL && extra_proxy_lines[0] != '\0') {
        size_t n = strlen(extra_proxy_lines);
        ini = append(ini, &len, "%s%s", extra_proxy_lines,
                     extra_proxy_lines[n - 1] == '\n' ? "" : "\n");
    }
    ini = append(ini, &len, "\n[shards]\n");
    for (size_t i = 0; i < nshards; i++) {
        ini = append(ini, &len, "s%zu = 127.0.0.1:%d\n", i + 1, shards[i].port);
    }
    return ini;
}

int harness_replica_start(harness_proc *p, int master_port)
{
    memset(p, 0, sizeof(*p));
    for (int attempt = 0; attempt < HARNESS_START_ATTEMPTS; attempt++) {
        if (make_dir(p, "replica") == -1) {
            return -1;
        }
        p->port = harness_free_port();
        if (redis_spawn_replica(p, master_port) == 0) {
            return 0;
        }
    }
    return -1;
}

/* Starts redis-sentinel with conf_body after its own lines: a plain port,
 * or with cert_dir a TLS port only (see harness_sentinel_start_tls). */
static int sentinel_start(harness_proc *p, const char *cert_dir, int auth_clients,
                          const char *conf_body)
{
    memset(p, 0, sizeof(*p));
    for (int attempt = 0; attempt < HARNESS_START_ATTEMPTS; attempt++) {
        if (make_dir(p, "sentinel") == -1) {
            return -1;
        }
        p->port = harness_free_port();
        char *body = replace_port(conf_body, p->port);
        size_t len = strlen(body ? body : "") + strlen(p->dir) + 4 * 300 + 256;
        char *conf = malloc(len);
        char path[sizeof(p->dir) + 32];
        snprintf(path, sizeof(path), "%s/sentinel.conf", p->dir);
        snprintf(p->log, sizeof(p->log), "%s/sentinel.log", p->dir);
        if (body == NULL || conf == NULL) {
            free(body);
            free(conf);
            return -1;
        }
        if (cert_dir)
            snprintf(conf, len,
                     "port 0\ntls-port %d\nbind 127.0.0.1\ndir %s\n"
                     "tls-cert-file %s/server.crt\ntls-key-file %s/server.key\n"
                     "tls-ca-cert-file %s/ca.crt\ntls-auth-clients %s\ntls-replication yes\n%s",
                     p->port, p->dir, cert_dir, cert_dir, cert_dir, auth_clients ? "yes" : "no",
                     body);
        else
            snprintf(conf, len, "port %d\nbind 127.0.0.1\ndir %s\n%s", p->port, p->dir, body);
        int written = write_file(path, conf);
        free(body);
        free(conf);
        if (written == -1) {
            remove_dir(p->dir);
            return -1;
        }
        char *argv[] = {REDIS_SENTINEL_BIN, path, NULL};
        p->pid = spawn(argv, p->log, p->dir, 0);
        if (p->pid == -1) {
            p->pid = 0;
            remove_dir(p->dir);
            continue;
        }
        /* With TLS no PING in plain text: a TCP connection accepted is enough. */
        if (wait_ready(p, cert_dir == NULL, start_timeout_ms()) == 0) {
            return 0;
        }
        abandon(p, "redis-sentinel");
    }
    return -1;
}

int harness_sentinel_start(harness_proc *p, const char *conf_body)
{
    return sentinel_start(p, NULL, 0, conf_body);
}

int harness_sentinel_start_tls(harness_proc *p, const char *cert_dir, int auth_clients,
                               const char *conf_body)
{
    return sentinel_start(p, cert_dir, auth_clients, conf_body);
}
