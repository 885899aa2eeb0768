// ember benchmark workload: a context-switch storm. Two threads pass one
// byte back and forth over two pipes N times; each pass blocks one thread
// and wakes the other. With WORK, each thread computes WORK steps of
// arithmetic after each byte it gets (a paced storm: real work between
// switches, at the switch rate WORK sets). Prints the elapsed seconds and
// the context switches per second.
//
// usage: storm PASSES [WORK]
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static int ab[2], ba[2];
static long passes, work;
static volatile unsigned long sink;

/* `work` steps of a dependent multiply-add chain (no memory traffic). */
static void compute(void)
{
	unsigned long x = sink;
	for (long i = 0; i < work; i++) {
		x = x * 6364136223846793005UL + 1442695040888963407UL;
		__asm__ volatile("" : "+r"(x)); /* kept a chain: not folded away */
	}
	sink = x;
}

static void *pong(void *arg)
{
	(void)arg;
	char c;
	for (long i = 0; i < passes; i++) {
		if (read(ab[0], &c, 1) != 1)
			break;
		compute();
		if (write(ba[1], &c, 1) != 1)
			break;
	}
	return 0;
}

int main(int argc, char **argv)
{
	passes = argc > 1 ? atol(argv[1]) : 200000;
	work = argc > 2 ? atol(argv[2]) : 0;
	if (pipe(ab) || pipe(ba))
		return 1;
	pthread_t t;
	pthread_create(&t, 0, pong, 0);
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	char c = 'x';
	for (long i = 0; i < passes; i++) {
		if (write(ab[1], &c, 1) != 1 || read(ba[0], &c, 1) != 1)
			break;
		compute();
	}
	clock_gettime(CLOCK_MONOTONIC, &b);
	pthread_join(t, 0);
	double s = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;
	printf("%.6f %.0f\n", s, 2 * passes / s);
	return 0;
}
