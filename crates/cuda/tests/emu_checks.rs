//! The emulated device refuses what a GPU would get wrong, naming the kernel or call:
//! a launch with an argument of the wrong kind or count or a view of the wrong element
//! type, a pointer outside every
//! allocation, an access past an allocation's end from inside a kernel, arithmetic on
//! memory never written, a copy of the wrong size, a GEMM with a leading dimension
//! cuBLAS rejects or an operand beyond its allocation, CUDA's launch limits, divergent
//! barriers and warp operations naming exited lanes. And its model of the device holds:
//! warp shuffles, votes, dynamic shared memory and atomics give the device's results.

use cuda_kernels::backend::Cuda;
use cuda_kernels::device::{Device, Dims, Dtype, Gemm, KArg};
use cuda_kernels::emu::{kernel_names, EmuDevice};
use cuda_kernels::{kernel_name, SOURCES};

fn dims(g: u32, b: u32) -> Dims {
    Dims { grid: (g, 1, 1), block: (b, 1, 1), shared: 0 }
}

fn buf(d: &EmuDevice, v: &[f32]) -> u64 {
    let p = d.alloc(4 * v.len()).unwrap();
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    d.htod(p, &bytes).unwrap();
    p
}

fn get(d: &EmuDevice, p: u64, n: usize) -> Vec<f32> {
    let mut b = vec![0u8; 4 * n];
    d.dtoh(&mut b, p).unwrap();
    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// A 4 x 4 x 4 f32 GEMM, C = A B, each operand one 16-element matrix.
fn square4(a: u64, b: u64, c: u64) -> Gemm {
    Gemm { ta: false, tb: false, m: 4, n: 4, k: 4, alpha: 1.0, a, lda: 4, stride_a: 0, b, ldb: 4, stride_b: 0, beta: 0.0, c, ldc: 4, stride_c: 0, batch: 1, ab: Dtype::F32, cd: Dtype::F32, bias: 0, gelu_aux: 0 }
}

fn err_contains(r: Result<(), String>, parts: &[&str]) {
    let e = r.expect_err("the emulator should refuse this");
    for p in parts {
        assert!(e.contains(p), "error {e:?} does not name {p:?}");
    }
}

#[test]
fn the_host_build_holds_every_listed_kernel() {
    let mut built: Vec<_> = kernel_names().into_iter().map(|(s, k)| format!("{s}/{k}")).collect();
    built.sort();
    // Every kernel, and the bf16 build of each source written over floatX.
    let mut listed: Vec<_> = SOURCES
        .iter()
        .flat_map(|s| s.dtypes().iter().flat_map(move |&dt| s.kernels.iter().map(move |k| format!("{}/{}", s.name, kernel_name(k, dt)))))
        .collect();
    listed.sort();
    assert_eq!(built, listed);
}

#[test]
fn launches_are_checked_against_the_signature_and_limits() {
    let d = EmuDevice::new(0);
    let (a, b) = (buf(&d, &[1.0; 64]), buf(&d, &[2.0; 64]));
    // Count and kind.
    err_contains(d.launch("add_inplace", dims(1, 64), &[KArg::Ptr(a), KArg::Ptr(b)]), &["add_inplace", "launched with 2 arguments"]);
    err_contains(d.launch("add_inplace", dims(1, 64), &[KArg::Ptr(a), KArg::Ptr(b), KArg::I32(64)]), &["add_inplace", "argument 2 (long n)", "I32"]);
    err_contains(d.launch("add_inplace", dims(1, 64), &[KArg::Ptr(a), KArg::F32(1.0), KArg::I64(64)]), &["argument 1 (const floatX* a)"]);
    // A pointer into no allocation.
    err_contains(d.launch("add_inplace", dims(1, 64), &[KArg::Ptr(a), KArg::Ptr(0x1234_5678), KArg::I64(64)]), &["add_inplace", "argument 1", "not device memory"]);
    // Memory of another device.
    let other = EmuDevice::new(1);
    let c = buf(&other, &[0.0; 64]);
    err_contains(d.launch("add_inplace", dims(1, 64), &[KArg::Ptr(a), KArg::Ptr(c), KArg::I64(64)]), &["memory of cuda-emu:1"]);
    // CUDA's limits.
    err_contains(d.launch("add_inplace", dims(1, 2048), &[KArg::Ptr(a), KArg::Ptr(b), KArg::I64(64)]), &["2048 threads per block"]);
    err_contains(d.launch("add_inplace", dims(0, 64), &[KArg::Ptr(a), KArg::Ptr(b), KArg::I64(64)]), &["zero grid"]);
    err_contains(
        d.launch("add_inplace", Dims { grid: (1, 1, 1), block: (64, 1, 1), shared: 64 * 1024 }, &[KArg::Ptr(a), KArg::Ptr(b), KArg::I64(64)]),
        &["dynamic shared memory"],
    );
    err_contains(d.launch("no_such_kernel", dims(1, 1), &[]), &["no kernel named no_such_kernel"]);
    // And a correct launch works.
    d.launch("add_inplace", dims(1, 64), &[KArg::Ptr(a), KArg::Ptr(b), KArg::I64(64)]).unwrap();
    assert_eq!(get(&d, a, 64), vec![3.0; 64]);
}

#[test]
fn a_kernel_reading_one_element_past_the_end_is_stopped_and_named() {
    let d = EmuDevice::new(0);
    let (a, b) = (buf(&d, &[1.0; 100]), buf(&d, &[2.0; 100]));
    // An off-by-one count: thread 100 touches element 100 of 100-element buffers.
    err_contains(
        d.launch("add_inplace", dims(1, 128), &[KArg::Ptr(a), KArg::Ptr(b), KArg::I64(101)]),
        &["add_inplace", "elementwise.cu", "thread (100, 0, 0)", "0 bytes past the end of allocation", "400 bytes"],
    );
    // The threads before the faulting one ran (as on a GPU, a faulted kernel's writes
    // are partial); within bounds it runs, and the device is usable after the fault.
    assert_eq!(get(&d, a, 100), vec![3.0; 100]);
    d.launch("add_inplace", dims(1, 128), &[KArg::Ptr(a), KArg::Ptr(b), KArg::I64(100)]).unwrap();
    assert_eq!(get(&d, a, 100), vec![5.0; 100]);
}

#[test]
fn memory_never_written_is_an_error_where_it_is_read() {
    let d = EmuDevice::new(0);
    let a = buf(&d, &[1.0; 32]);
    let never = d.alloc(4 * 32).unwrap();
    // A kernel's arithmetic on it traps.
    err_contains(
        d.launch("add_inplace", dims(1, 32), &[KArg::Ptr(a), KArg::Ptr(never), KArg::I64(32)]),
        &["add_inplace", "block (0, 0, 0), thread (0, 0, 0)", "never written"],
    );
    // A copy to the host of it.
    let mut host = vec![0u8; 128];
    err_contains(d.dtoh(&mut host, never), &["copy of 128 bytes to the host", "element 0", "never written"]);
    // A GEMM operand.
    let c = buf(&d, &[0.0; 16]);
    let g = square4(never, a, c);
    err_contains(d.gemm(&g), &["cuBLAS gemm NN m=4 n=4 k=4", "reads A element 0", "never written"]);
    // Half written: the first unwritten element is named.
    d.htod(never, &[0u8; 64]).unwrap();
    err_contains(d.dtoh(&mut host, never), &["element 16"]);
}

#[test]
fn copies_and_gemms_are_bounds_checked() {
    let d = EmuDevice::new(0);
    let a = buf(&d, &[1.0; 16]);
    err_contains(d.htod(a, &[0u8; 68]), &["copy of 68 bytes to the device", "run 4 bytes past its end"]);
    let mut host = vec![0u8; 68];
    err_contains(d.dtoh(&mut host, a + 4), &["run 8 bytes past its end"]);
    err_contains(d.dtod(a, a + 8, 64), &["source", "past its end"]);
    err_contains(d.memset(a + 4, 0, 64), &["memset"]);
    // cuBLAS's own rule: lda >= rows of A.
    let (b, c) = (buf(&d, &[1.0; 16]), buf(&d, &[0.0; 16]));
    let mut g = Gemm { lda: 3, ..square4(a, b, c) };
    err_contains(d.gemm(&g), &["lda = 3 is less than the 4 rows", "CUBLAS_STATUS_INVALID_VALUE"]);
    // A legal but too large leading dimension runs past A's allocation.
    g.lda = 5;
    err_contains(d.gemm(&g), &["A:", "past its end"]);
    // A batch stride that leaves C's allocation.
    g.lda = 4;
    g.batch = 2;
    g.stride_a = 0;
    g.stride_b = 0;
    g.stride_c = 16;
    err_contains(d.gemm(&g), &["C:", "past its end"]);
    g.batch = 1;
    d.gemm(&g).unwrap();
    assert_eq!(get(&d, c, 16), vec![4.0; 16]);
}

#[test]
fn the_column_major_reference_gemm_honours_transposes_leading_dimensions_and_strides() {
    let d = EmuDevice::new(0);
    // Two batches of A (3 x 2 stored with lda 4, transposed: op(A) 2 x 3) and B (3 x 2, ldb 3).
    let (m, n, k) = (2usize, 2usize, 3usize);
    let a_host: Vec<f32> = (0..2 * 4 * m).map(|i| i as f32).collect(); // stride 8
    let b_host: Vec<f32> = (0..2 * 6).map(|i| (i as f32) * 0.5 - 1.0).collect(); // stride 6
    let c0: Vec<f32> = (0..2 * 4).map(|i| i as f32).collect(); // ldc 2, stride 4
    let (a, b, c) = (buf(&d, &a_host), buf(&d, &b_host), buf(&d, &c0));
    let g = Gemm { ta: true, tb: false, m, n, k, alpha: 2.0, a, lda: 4, stride_a: 8, b, ldb: 3, stride_b: 6, beta: 0.5, c, ldc: 2, stride_c: 4, batch: 2, ab: Dtype::F32, cd: Dtype::F32, bias: 0, gelu_aux: 0 };
    d.gemm(&g).unwrap();
    let got = get(&d, c, 8);
    for p in 0..2 {
        for j in 0..n {
            for i in 0..m {
                // op(A)[i, l] = A[l + i lda], B[l, j] = B[l + j ldb].
                let s: f32 = (0..k).map(|l| a_host[p * 8 + l + i * 4] * b_host[p * 6 + l + j * 3]).sum();
                let want = 2.0 * s + 0.5 * c0[p * 4 + i + j * 2];
                assert_eq!(got[p * 4 + i + j * 2], want, "batch {p} C[{i}, {j}]");
            }
        }
    }
}

#[test]
fn warp_shuffles_votes_shared_memory_and_atomics_behave_as_on_the_device() {
    let d = EmuDevice::new(0);
    let (blocks, threads) = (2usize, 96usize);
    let x: Vec<f32> = (0..blocks * threads).map(|i| (i % 13) as f32).collect();
    let n = blocks * threads;
    let xs = buf(&d, &x);
    let out: Vec<u64> = (0..5).map(|_| buf(&d, &vec![0.0; n])).collect();
    let count = buf(&d, &[0.0]);
    d.memset(count, 0, 4).unwrap();
    let dm = Dims { grid: (blocks as u32, 1, 1), block: (threads as u32, 1, 1), shared: (4 * threads) as u32 };
    let args: Vec<KArg> = out.iter().map(|&p| KArg::Ptr(p)).chain([KArg::Ptr(count), KArg::Ptr(xs)]).collect();
    d.launch("selftest_warps", dm, &args).unwrap();
    let (sums, down, up, reversed) = (get(&d, out[0], n), get(&d, out[1], n), get(&d, out[2], n), get(&d, out[4], n));
    let mut bal = vec![0u8; 4 * n];
    d.dtoh(&mut bal, out[3]).unwrap();
    for bl in 0..blocks {
        for w in 0..threads / 32 {
            let base = bl * threads + w * 32;
            let warp = &x[base..base + 32];
            let total: f32 = warp.iter().sum();
            for lane in 0..32 {
                let k = base + lane;
                assert_eq!(sums[k], total, "xor butterfly, thread {k}");
                assert_eq!(up[k], warp[..=lane].iter().sum::<f32>(), "shfl_up prefix, thread {k}");
                assert_eq!(u32::from_le_bytes(bal[4 * k..4 * k + 4].try_into().unwrap()), 0xaaaa_aaaa, "ballot of odd lanes");
                assert_eq!(reversed[k], x[bl * threads + threads - 1 - (w * 32 + lane)], "shared-memory reversal");
            }
            assert_eq!(down[base], total, "shfl_down sum at lane 0");
        }
    }
    let mut c = [0u8; 4];
    d.dtoh(&mut c, count).unwrap();
    assert_eq!(u32::from_le_bytes(c) as usize, n, "atomicAdd count");
}

#[test]
fn divergent_barriers_and_shuffles_with_exited_lanes_are_errors() {
    let d = EmuDevice::new(0);
    let x = buf(&d, &[0.0; 64]);
    err_contains(d.launch("selftest_divergent_barrier", dims(1, 64), &[KArg::Ptr(x)]), &["selftest_divergent_barrier", "after others exited"]);
    err_contains(d.launch("selftest_shuffle_after_exit", dims(1, 32), &[KArg::Ptr(x)]), &["selftest_shuffle_after_exit", "exited"]);
}

#[test]
fn the_backend_on_the_emulated_device_reports_its_memory() {
    let cuda = Cuda::emulated(7);
    assert_eq!(cuda.name(), "cuda-emu:7");
    let before = cuda.memory().0;
    let v = model::backend::Backend::zeros(&cuda, 1000);
    assert_eq!(cuda.memory().0, before + 4000);
    drop(v);
    assert_eq!(cuda.memory(), (before, before + 4000));
}

/// cuBLASLt's bias epilogue as the reference GEMM runs it: bias[i] added to row i of
/// every column in fp32 before C is stored; a bias shorter than m rows is refused.
#[test]
fn the_bias_epilogue_adds_a_row_bias_and_is_bounds_checked() {
    let d = EmuDevice::new(0);
    let a: Vec<f32> = (0..16).map(|i| i as f32).collect();
    let ident: Vec<f32> = (0..16).map(|i| if i % 5 == 0 { 1.0 } else { 0.0 }).collect();
    let (pa, pb, pc) = (buf(&d, &a), buf(&d, &ident), buf(&d, &[0.0; 16]));
    let bias = buf(&d, &[10.0, 20.0, 30.0, 40.0]);
    d.gemm(&Gemm { bias, ..square4(pa, pb, pc) }).unwrap();
    let want: Vec<f32> = (0..16).map(|i| i as f32 + [10.0, 20.0, 30.0, 40.0][i % 4]).collect();
    assert_eq!(get(&d, pc, 16), want, "column-major C = A I + bias per row");
    let short = buf(&d, &[1.0; 3]);
    err_contains(d.gemm(&Gemm { bias: short, ..square4(pa, pb, pc) }), &["bias", "past its end"]);
}

/// A view passed where the kernel reads another element type (an f32 buffer to the bf16
/// build, a bf16 one to a `float*` statistic) is refused before the launch, naming the
/// argument; launching the matching views runs.
#[test]
fn a_view_of_the_wrong_element_type_is_refused_naming_the_argument() {
    use model::backend::Backend;
    let f32s = Cuda::emulated(0);
    let bf16s = f32s.with_dtype(Dtype::Bf16);
    let (x, y) = (f32s.from_host(&[1.0; 64]), bf16s.from_host(&[1.0; 64]));
    let d = Dims { grid: (1, 1, 1), block: (64, 1, 1), shared: 0 };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| bf16s.launch("add_inplace", d, &[&x.arg(), &y.arg(), &64i64])));
    let msg = *r.expect_err("an f32 view to the bf16 build").downcast::<String>().unwrap();
    assert!(msg.contains("add_inplace_bf16") && msg.contains("argument 0 (floatX* out)") && msg.contains("view of F32 elements, the kernel reads Bf16"), "{msg}");
    let stats = bf16s.zeros(4);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| bf16s.launch("sum_squares_partial", d, &[&stats.arg(), &y.arg(), &64i64])));
    let msg = *r.expect_err("a bf16 view as float* partials").downcast::<String>().unwrap();
    assert!(msg.contains("argument 0 (float* partial)") && msg.contains("view of Bf16 elements, the kernel reads F32"), "{msg}");
    let mut z = bf16s.from_host(&[2.0; 64]);
    bf16s.add_inplace(&mut z, &y);
    let mut host = vec![0.0; 64];
    bf16s.to_host(&z, &mut host);
    assert_eq!(host, vec![3.0; 64]);
}

/// The GELU epilogue (GELU_AUX_BIAS): the biased product into the aux buffer, its GELU
/// (tanh form) into C; asking for it without a bias is refused as cuBLASLt refuses it.
#[test]
fn the_gelu_epilogue_keeps_the_pre_activation_and_stores_its_gelu() {
    let d = EmuDevice::new(0);
    let a: Vec<f32> = (0..16).map(|i| (i as f32 - 8.0) / 4.0).collect();
    let ident: Vec<f32> = (0..16).map(|i| if i % 5 == 0 { 1.0 } else { 0.0 }).collect();
    let (pa, pb, pc, aux) = (buf(&d, &a), buf(&d, &ident), buf(&d, &[0.0; 16]), buf(&d, &[0.0; 16]));
    let bias = buf(&d, &[0.5, -0.5, 1.0, 0.0]);
    d.gemm(&Gemm { bias, gelu_aux: aux, ..square4(pa, pb, pc) }).unwrap();
    let pre: Vec<f32> = (0..16).map(|i| a[i] + [0.5, -0.5, 1.0, 0.0][i % 4]).collect();
    assert_eq!(get(&d, aux, 16), pre);
    for (g, x) in get(&d, pc, 16).iter().zip(&pre) {
        let want = 0.5 * x * (1.0 + (0.797_884_6 * (x + 0.044_715 * x * x * x)).tanh());
        assert!((g - want).abs() <= 1e-6 * want.abs().max(1.0), "gelu({x}) = {g}, want {want}");
    }
    err_contains(d.gemm(&Gemm { gelu_aux: aux, ..square4(pa, pb, pc) }), &["GELU", "needs a bias"]);
}
