/* Plain C baseline for `hyperion bench comm --backend mpi`: times MPI_Allreduce
 * (in place, as the Rust backend calls it) and MPI_Reduce_scatter_block on f32 with
 * the same methodology as comm::bench: 2 warm-up calls, then 3 loops of
 * clamp(256 MiB / size, 5, 1000) calls after a barrier; each loop's time is the slowest
 * rank's mean, and the best loop is reported.
 * busbw = algbw * 2(p-1)/p (all-reduce) or (p-1)/p (reduce-scatter), as nccl-tests.
 *
 * Build: mpicc -O2 -o mpi_bench mpi_bench.c
 * Run:   mpirun -np 2 ./mpi_bench 1048576 268435456     (min and max size in bytes)
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long iters_for(long size) {
    long it = (256L << 20) / (size > 0 ? size : 1);
    return it < 5 ? 5 : (it > 1000 ? 1000 : it);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, p;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &p);
    long lo = argc > 1 ? atol(argv[1]) : (1L << 20);
    long hi = argc > 2 ? atol(argv[2]) : (256L << 20);
    if (rank == 0) {
        printf("# plain C MPI baseline, %d ranks, f32, MPI_SUM\n", p);
        printf("%15s %12s %12s %12s %12s\n", "op", "size(B)", "time(us)", "algbw(GB/s)", "busbw(GB/s)");
    }
    for (int op = 0; op < 2; op++) {
        for (long size = lo; size <= hi; size *= 2) {
            long n = (size / 4) / p * p;
            float *full = malloc(n * sizeof(float));
            float *part = malloc((n / p) * sizeof(float));
            if (!full || !part) { fprintf(stderr, "out of memory\n"); MPI_Abort(MPI_COMM_WORLD, 1); }
            for (long i = 0; i < n; i++) full[i] = 1.0f;
            memset(part, 0, (n / p) * sizeof(float));
            long iters = iters_for(size);
            for (int w = 0; w < 2; w++) { /* warm-up: page faults, caches */
                if (op == 0)
                    MPI_Allreduce(MPI_IN_PLACE, full, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
                else
                    MPI_Reduce_scatter_block(full, part, (int)(n / p), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
            }
            /* TRIALS timed loops; each loop's time is the slowest rank's mean, the
             * best loop is reported (as comm::bench::time_op does). */
            float tmax = 1e30f;
            for (int trial = 0; trial < 3; trial++) {
                MPI_Barrier(MPI_COMM_WORLD);
                double t0 = MPI_Wtime();
                for (long it = 0; it < iters; it++) {
                    if (op == 0)
                        MPI_Allreduce(MPI_IN_PLACE, full, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
                    else
                        MPI_Reduce_scatter_block(full, part, (int)(n / p), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
                }
                float t = (float)((MPI_Wtime() - t0) / iters), tm;
                MPI_Allreduce(&t, &tm, 1, MPI_FLOAT, MPI_MAX, MPI_COMM_WORLD);
                if (tm < tmax) tmax = tm;
            }
            if (rank == 0) {
                double bytes = (double)n * 4, algbw = bytes / tmax / 1e9;
                double factor = op == 0 ? 2.0 * (p - 1) / p : (double)(p - 1) / p;
                printf("%15s %12ld %12.1f %12.2f %12.2f\n", op == 0 ? "all_reduce" : "reduce_scatter",
                       (long)bytes, tmax * 1e6, algbw, algbw * factor);
            }
            free(full);
            free(part);
        }
    }
    MPI_Finalize();
    return 0;
}
