// Loads sockmap_trace.bpf.o, attaches it, prints its counters every second
// until SIGINT/SIGTERM. Usage: loader sockmap_trace.bpf.o
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static unsigned long long kallsym(const char *name) {
  FILE *f = fopen("/proc/kallsyms", "r");
  char line[512], sym[256], type;
  unsigned long long addr, found = 0;
  while (f && fgets(line, sizeof(line), f))
    if (sscanf(line, "%llx %c %255s", &addr, &type, sym) == 3 && strcmp(sym, name) == 0) found = addr;
  if (f) fclose(f);
  return found;
}

int main(int argc, char **argv) {
  if (argc != 2) return fprintf(stderr, "usage: %s sockmap_trace.bpf.o\n", argv[0]), 2;
  unsigned long long ready = kallsym("sk_psock_verdict_data_ready");
  if (!ready) return fprintf(stderr, "sk_psock_verdict_data_ready not in /proc/kallsyms\n"), 1;
  struct bpf_object *obj = bpf_object__open_file(argv[1], NULL);
  if (!obj) return perror("open"), 1;
  struct bpf_map *rodata = bpf_object__find_map_by_name(obj, ".rodata");
  size_t size = 0;
  unsigned long long *value = rodata ? bpf_map__initial_value(rodata, &size) : NULL;
  if (!value || size < sizeof(*value)) return fprintf(stderr, "no .rodata\n"), 1;
  *value = ready;
  if (bpf_object__load(obj)) return perror("load"), 1;
  struct bpf_program *prog;
  bpf_object__for_each_program(prog, obj) if (!bpf_program__attach(prog)) return perror("attach"), 1;
  int counts = bpf_object__find_map_fd_by_name(obj, "counts");
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  while (!stop) {
    unsigned long long v[3] = {0};
    for (unsigned k = 0; k < 3; k++) bpf_map_lookup_elem(counts, &k, &v[k]);
    printf("data_ready %llu overlaps %llu retransmits %llu\n", v[0], v[1], v[2]);
    fflush(stdout);
    sleep(1);
  }
  bpf_object__close(obj);
  return 0;
}
