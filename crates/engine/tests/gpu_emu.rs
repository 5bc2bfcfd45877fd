//! The engine's GPU path on the emulated CUDA device (`train.device = "cuda-emu"`): the
//! same host code that drives a GPU, kernels from the same `.cu` text, cuBLAS's
//! semantics. 50 training steps of tiny GPT-2 and Llama models give the CPU run's loss
//! at every step and its final parameters (f32, relative 1e-4); in bf16 (fp32 masters)
//! the losses follow the f32 run's closely. Runs resume bitwise from their checkpoints,
//! which load on the CPU. Built with the `cuda` feature (scripts/test.sh runs it);
//! without it this file holds no tests.
#![cfg(feature = "cuda")]

use std::path::Path;

use engine::{StepTimes, Trainer};

const STEPS: usize = 50;

fn dataset(dir: &Path) -> data::Dataset {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/shakespeare/sonnets.txt");
    data::prepare(&[corpus], data::TokenizerKind::Char, dir, 0.1, &mut |_, _| {}).expect("prepare");
    data::Dataset::open(dir).expect("open")
}

fn cfg(preset_sets: &[&str], device: &str) -> config::ResolvedConfig {
    // The test's own settings last, so that they override these.
    let mut sets: Vec<String> = Vec::new();
    sets.extend(
        [
            format!("train.device=\"{device}\""),
            format!("train.steps={STEPS}"),
            "train.batch_size=4".into(),
            "train.grad_accum=2".into(),
            "optim.warmup_steps=5".into(),
            "optim.grad_clip=0.5".into(),
            "log.peak_flops=1e11".into(),
        ],
    );
    sets.extend(preset_sets.iter().map(|s| s.to_string()));
    config::resolve(Some("tiny"), None, &sets).expect("config")
}

fn run(sets: &[&str], device: &str, dir: &Path) -> (Vec<f64>, Vec<f64>, Vec<Vec<f32>>) {
    run_steps(sets, device, dir, STEPS)
}

/// Losses of `steps` steps then the validation loss, the gradient norms, the final
/// parameters; checks the device's memory against its count.
fn run_steps(sets: &[&str], device: &str, dir: &Path, steps: usize) -> (Vec<f64>, Vec<f64>, Vec<Vec<f32>>) {
    let mut t = Trainer::new(cfg(sets, device), data::Dataset::open(dir).unwrap(), Path::new("")).expect("trainer");
    let mut times = StepTimes::default();
    let (mut losses, mut norms) = (Vec::new(), Vec::new());
    for _ in 0..steps {
        let (l, n) = t.train_step(&mut times).expect("step");
        losses.push(l);
        norms.push(n);
    }
    let val = t.evaluate().expect("eval");
    losses.push(val);
    let mem = t.memory();
    if device != "cpu" {
        let d = mem.device.expect("a device run reports its device memory");
        eprintln!("{device}: device peak {} B, now {} B, counted {} B", d.peak, d.now, d.expected);
        // What the device holds is the count plus transient scratch (head logit chunks,
        // norm partials, attention row sums): within half again of the count (measured: 1.00-1.02), never below
        // the parameters and gradients it must hold.
        assert!(d.peak as f64 >= 0.9 * d.expected && (d.peak as f64) < 1.5 * d.expected, "{d:?}");
        assert!(d.device.starts_with(device), "{}", d.device);
    } else {
        assert!(mem.device.is_none());
    }
    (losses, norms, t.full_params().expect("params"))
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (d / n.max(1e-30)).sqrt()
}

fn equal_to_cpu(name: &str, sets: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path());
    let (cl, cn, cp) = run(sets, "cpu", dir.path());
    let (gl, gn, gp) = run(sets, "cuda-emu", dir.path());
    for (i, (g, c)) in gl.iter().zip(&cl).enumerate() {
        let what = if i == STEPS { "validation loss".to_string() } else { format!("step {} loss", i + 1) };
        assert!(((g - c) / c).abs() < 1e-4, "{name}: {what}: {g} on cuda-emu, {c} on the CPU");
    }
    for (i, (g, c)) in gn.iter().zip(&cn).enumerate() {
        assert!(((g - c) / c).abs() < 1e-4, "{name}: step {} gradient norm: {g} on cuda-emu, {c} on the CPU", i + 1);
    }
    for (i, (g, c)) in gp.iter().zip(&cp).enumerate() {
        let e = rel(g, c);
        assert!(e < 1e-4, "{name}: bucket {i} after {STEPS} steps differs by relative {e:e}");
    }
    // The run learned something (the comparison is not between two untrained models).
    assert!(cl[STEPS - 1] < cl[0] - 0.3, "{name}: loss {} -> {}", cl[0], cl[STEPS - 1]);
}

#[test]
fn fifty_steps_of_tiny_gpt2_on_the_emulated_device_equal_the_cpu_run() {
    equal_to_cpu("tiny (GPT-2)", &[]);
}

#[test]
fn fifty_steps_of_a_tiny_llama_on_the_emulated_device_equal_the_cpu_run() {
    equal_to_cpu("tiny Llama", &["model.arch=\"llama\"", "model.n_head=4", "model.n_kv_head=2"]);
}

/// bf16 storage with fp32 masters, moments, loss and statistics: the losses stay within
/// 2e-2 (relative) of the f32 CPU run's at every step, the validation loss within 0.02,
/// and the update is not f32 by another name (some loss differs by more than f32 would).
#[test]
fn a_bf16_run_on_the_emulated_device_follows_the_f32_run() {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path());
    let steps = 30;
    let (cl, _, _) = run_steps(&[], "cpu", dir.path(), steps);
    let (bl, bn, _) = run_steps(&["train.dtype=\"bf16\""], "cuda-emu", dir.path(), steps);
    let mut worst = 0.0f64;
    for (i, (b, c)) in bl[..steps].iter().zip(&cl).enumerate() {
        let e = ((b - c) / c).abs();
        worst = worst.max(e);
        assert!(e < 2e-2, "step {} loss: {b} in bf16, {c} in f32", i + 1);
    }
    eprintln!("bf16 vs f32: worst step loss relative {worst:e}; validation {} vs {}", bl[steps], cl[steps]);
    assert!((bl[steps] - cl[steps]).abs() < 0.02, "validation loss {} in bf16, {} in f32", bl[steps], cl[steps]);
    assert!(worst > 1e-6, "bf16 losses equal f32's to {worst:e}: is bf16 in use?");
    assert!(bn.iter().all(|n| n.is_finite()));
    assert!(bl[steps - 1] < bl[0] - 0.3, "bf16 loss {} -> {}", bl[0], bl[steps - 1]);
}

/// With the masters and moments on the device, a checkpoint written mid-run (pulled
/// from the device) and resumed by a fresh trainer (uploaded again) continues exactly:
/// the same losses and bitwise the same parameters as the uninterrupted run. The
/// checkpoint (fp32 masters) loads on the CPU, whose next step is the device's.
fn resumes_bitwise(sets: &[&str], cpu_tol: f64) {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path());
    let run = tempfile::tempdir().unwrap();
    let c = || cfg(sets, "cuda-emu");
    let mut times = StepTimes::default();
    let mut whole = Trainer::new(c(), data::Dataset::open(dir.path()).unwrap(), Path::new("")).unwrap();
    let want: Vec<f64> = (0..12).map(|_| whole.train_step(&mut times).unwrap().0).collect();
    let want_params = whole.full_params().unwrap();

    let mut first = Trainer::new(c(), data::Dataset::open(dir.path()).unwrap(), run.path()).unwrap();
    let mut got: Vec<f64> = (0..6).map(|_| first.train_step(&mut times).unwrap().0).collect();
    first.save_checkpoint(&mut engine::Quiet).unwrap();
    // The first trainer goes on too: the checkpoint's pull left its device state intact.
    let more: Vec<f64> = (0..6).map(|_| first.train_step(&mut times).unwrap().0).collect();
    assert_eq!(more, want[6..], "the run that wrote the checkpoint");
    let mut second = Trainer::new(c(), data::Dataset::open(dir.path()).unwrap(), run.path()).unwrap();
    second.restore(&engine::open_checkpoint(run.path()).unwrap()).unwrap();
    got.extend((0..6).map(|_| second.train_step(&mut times).unwrap().0));
    assert_eq!(got, want, "losses of the resumed run");
    assert_eq!(second.full_params().unwrap(), want_params, "parameters of the resumed run");
    // And the checkpoint loads on the CPU: the same next step as on the device.
    let cpu_sets: Vec<&str> = sets.iter().copied().filter(|s| !s.starts_with("train.dtype")).collect();
    let mut cpu = Trainer::new(cfg(&cpu_sets, "cpu"), data::Dataset::open(dir.path()).unwrap(), Path::new("")).unwrap();
    cpu.restore(&engine::open_checkpoint(run.path()).unwrap()).unwrap();
    let next = cpu.train_step(&mut times).unwrap().0;
    assert!(((next - want[6]) / want[6]).abs() < cpu_tol, "step 7 on the CPU from the device's checkpoint: {next} vs {}", want[6]);
}

#[test]
fn a_run_on_the_emulated_device_resumes_bitwise_from_its_checkpoint() {
    resumes_bitwise(&[], 1e-5);
}

#[test]
fn a_bf16_run_on_the_emulated_device_resumes_bitwise_and_its_checkpoint_loads_on_the_cpu() {
    resumes_bitwise(&["train.dtype=\"bf16\""], 2e-2);
}

/// Data parallelism over emulated devices (one per thread rank, `cuda-emu:0` and
/// `cuda-emu:1`; gradients reduced by the device collectives): dp 2 with every ZeRO
/// stage equals one rank with the same global batch (losses at every step and the final
/// parameters, relative 1e-4), every rank holds the same parameters, and each device's
/// peak memory is its layout's count.
#[test]
fn dp2_with_every_zero_stage_on_emulated_devices_equals_one_rank() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path());
    let steps = 10;
    let sets = |batch: usize, dp: usize, zero: u8| -> Vec<String> {
        vec![format!("train.batch_size={batch}"), "train.grad_accum=2".into(), format!("parallel.dp={dp}"), format!("parallel.zero={zero}")]
    };
    let one = |device: &str| {
        let s = sets(4, 1, 0);
        let s: Vec<&str> = s.iter().map(|x| x.as_str()).collect();
        let mut t = Trainer::new(cfg(&s, device), data::Dataset::open(dir.path()).unwrap(), Path::new("")).unwrap();
        let mut times = StepTimes::default();
        let l: Vec<f64> = (0..steps).map(|_| t.train_step(&mut times).unwrap().0).collect();
        (l, t.full_params().unwrap())
    };
    let (want, want_params) = one("cpu");
    for zero in [0u8, 1, 2, 3] {
        let out = comm::run_local(2, Duration::from_secs(120), |c| {
            let rank = engine::Rank::new(&c)?;
            let s = sets(2, 2, zero);
            let s: Vec<&str> = s.iter().map(|x| x.as_str()).collect();
            let mut t = Trainer::with_rank(cfg(&s, "cuda-emu"), data::Dataset::open(dir.path()).unwrap(), Path::new(""), rank)?;
            let mut times = StepTimes::default();
            let l = (0..steps).map(|_| t.train_step(&mut times).map(|x| x.0)).collect::<Result<Vec<f64>, _>>()?;
            let d = t.memory().device.expect("device memory");
            // The count follows the layout (ZeRO 1-3 shard the state over the group).
            eprintln!("ZeRO-{zero} {}: device peak {} B, counted {} B ({:.3})", d.device, d.peak, d.expected, d.peak as f64 / d.expected);
            assert!(d.peak as f64 >= 0.9 * d.expected && (d.peak as f64) < 1.5 * d.expected, "ZeRO-{zero}: {d:?}");
            let device = d.device;
            Ok::<_, engine::EngineError>((l, t.full_params()?, device))
        })
        .expect("ranks");
        assert_eq!(out[1].1, out[0].1, "ZeRO-{zero}: the ranks' parameters differ");
        for (i, (g, c)) in out[0].0.iter().zip(&want).enumerate() {
            assert!(((g - c) / c).abs() < 1e-4, "ZeRO-{zero}: step {} loss {g} on 2 devices, {c} on one CPU rank", i + 1);
        }
        for (i, (g, c)) in out[0].1.iter().zip(&want_params).enumerate() {
            let e = rel(g, c);
            assert!(e < 1e-4, "ZeRO-{zero}: bucket {i} after {steps} steps differs by relative {e:e}");
        }
        assert_eq!(out[0].2, "cuda-emu:0");
        assert_eq!(out[1].2, "cuda-emu:1", "one device per rank");
    }
}

/// Tensor parallelism over emulated devices (one per rank; the tp group's reductions,
/// and with sequence parallelism its gathers and scatters, by the device collectives):
/// tp 2, with and without sp, and tp 2 x dp 2 with ZeRO 1, equal one CPU rank (losses at
/// every step, relative 1e-4; each rank's parameters its parts of the CPU run's, 1e-4).
#[test]
fn tp2_with_and_without_sp_and_tp2_dp2_on_emulated_devices_equal_one_rank() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path());
    let steps = 6;
    let sets = |batch: usize, dp: usize, tp: usize, sp: bool| -> Vec<String> {
        vec![
            format!("train.batch_size={batch}"),
            "train.grad_accum=1".into(),
            format!("parallel.dp={dp}"),
            format!("parallel.tp={tp}"),
            format!("parallel.sp={sp}"),
            format!("parallel.zero={}", if dp > 1 { 1 } else { 0 }),
            "model.arch=\"llama\"".into(),
            "model.n_head=4".into(),
            "model.n_kv_head=2".into(),
        ]
    };
    let base = sets(4, 1, 1, false);
    let base: Vec<&str> = base.iter().map(|x| x.as_str()).collect();
    let mut cpu = Trainer::new(cfg(&base, "cpu"), data::Dataset::open(dir.path()).unwrap(), Path::new("")).unwrap();
    let mut times = StepTimes::default();
    let want: Vec<f64> = (0..steps).map(|_| cpu.train_step(&mut times).unwrap().0).collect();
    let want_params = cpu.full_params().unwrap();
    for (dp, tp, sp) in [(1, 2, false), (1, 2, true), (2, 2, false)] {
        let s = sets(4 / dp, dp, tp, sp);
        let out = comm::run_local(dp * tp, Duration::from_secs(120), |c| {
            let s: Vec<&str> = s.iter().map(|x| x.as_str()).collect();
            let config = cfg(&s, "cuda-emu");
            let rank = engine::Rank::for_config(&c, &config)?;
            let mut t = Trainer::with_rank(config, data::Dataset::open(dir.path()).unwrap(), Path::new(""), rank)?;
            let mut times = StepTimes::default();
            let l = (0..steps).map(|_| t.train_step(&mut times).map(|x| x.0)).collect::<Result<Vec<f64>, _>>()?;
            let device = t.memory().device.expect("device memory").device;
            // The single-rank model's parameters, cut to this rank's parts.
            let whole = model::Gpt::new(t.global.clone());
            let mut expected = t.gpt.zeros();
            whole.layout.tp_extract(&want_params, &t.gpt.layout, &mut expected, tp, t.rank.tp_rank);
            Ok::<_, engine::EngineError>((l, t.full_params()?, device, expected))
        })
        .expect("ranks");
        let what = format!("dp {dp} x tp {tp} (sp {sp})");
        for (i, (g, c)) in out[0].0.iter().zip(&want).enumerate() {
            assert!(((g - c) / c).abs() < 1e-4, "{what}: step {} loss {g} on the devices, {c} on one CPU rank", i + 1);
        }
        for o in &out[1..] {
            assert_eq!(o.0, out[0].0, "{what}: the ranks' losses differ");
        }
        for (r, o) in out.iter().enumerate() {
            for (i, (g, c)) in o.1.iter().zip(&o.3).enumerate() {
                let e = rel(g, c);
                assert!(e < 1e-4, "{what}: rank {r} bucket {i} after {steps} steps differs by relative {e:e}");
            }
        }
        let devices: Vec<&str> = out.iter().map(|o| o.2.as_str()).collect();
        let expect: Vec<String> = (0..dp * tp).map(|r| format!("cuda-emu:{r}")).collect();
        assert_eq!(devices, expect, "{what}: one device per rank");
    }
}

/// Checkpoints of device runs are the run's, whatever the layout: a bf16 run at dp 2
/// with ZeRO 3 on emulated devices (masters and moments pulled from the shards) resumes
/// on one CPU rank and on tp 2 devices, both taking the step the uninterrupted device
/// run takes (f32 CPU within bf16's 2e-2; the bf16 tp 2 run within 2e-2).
#[test]
fn a_dp2_zero3_bf16_device_checkpoint_resumes_on_the_cpu_and_on_tp2_devices() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path());
    let run = tempfile::tempdir().unwrap();
    let llama = ["model.arch=\"llama\"", "model.n_head=4", "model.n_kv_head=2", "train.dtype=\"bf16\""];
    let with = |extra: &[&str]| -> Vec<String> { llama.iter().chain(extra).map(|s| s.to_string()).collect() };
    let dp2 = with(&["parallel.dp=2", "parallel.zero=3", "train.batch_size=2"]);
    let out = comm::run_local(2, Duration::from_secs(120), |c| {
        let s: Vec<&str> = dp2.iter().map(|x| x.as_str()).collect();
        let mut t = Trainer::with_rank(cfg(&s, "cuda-emu"), data::Dataset::open(dir.path()).unwrap(), run.path(), engine::Rank::new(&c)?)?;
        let mut times = StepTimes::default();
        for _ in 0..3 {
            t.train_step(&mut times)?;
        }
        t.save_checkpoint(&mut engine::Quiet)?;
        Ok::<_, engine::EngineError>(t.train_step(&mut times)?.0)
    })
    .expect("dp2 ranks");
    let want = out[0];
    // One CPU rank (f32), the same global batch.
    let cpu_sets = ["model.arch=\"llama\"", "model.n_head=4", "model.n_kv_head=2", "train.batch_size=4"];
    let mut cpu = Trainer::new(cfg(&cpu_sets, "cpu"), data::Dataset::open(dir.path()).unwrap(), Path::new("")).unwrap();
    cpu.restore(&engine::open_checkpoint(run.path()).unwrap()).unwrap();
    let got = cpu.train_step(&mut StepTimes::default()).unwrap().0;
    assert!(((got - want) / want).abs() < 2e-2, "step 4 on the CPU from the dp2 ZeRO-3 device checkpoint: {got}, the device run's {want}");
    // Two tensor-parallel devices.
    let tp2 = with(&["parallel.tp=2", "train.batch_size=4"]);
    let out = comm::run_local(2, Duration::from_secs(120), |c| {
        let s: Vec<&str> = tp2.iter().map(|x| x.as_str()).collect();
        let config = cfg(&s, "cuda-emu");
        let rank = engine::Rank::for_config(&c, &config)?;
        let mut t = Trainer::with_rank(config, data::Dataset::open(dir.path()).unwrap(), Path::new(""), rank)?;
        t.restore(&engine::open_checkpoint(run.path())?)?;
        Ok::<_, engine::EngineError>(t.train_step(&mut StepTimes::default())?.0)
    })
    .expect("tp2 ranks");
    assert!(((out[0] - want) / want).abs() < 2e-2, "step 4 on tp 2 devices: {}, the dp2 run's {want}", out[0]);
    assert!(out[0] != got, "the bf16 tp2 step equals the f32 CPU step exactly: is bf16 in use?");
}

/// Pipeline stages on emulated devices (one per rank; each stage's passes on its
/// device, the messages through the host's links): pp 2 with the 1F1B schedule for tiny
/// GPT-2 (its tied embedding summed across the first and last stage) and Llama, the
/// interleaved schedule, and dp 2 x pp 2 with ZeRO 1 and 3, equal one CPU rank (losses
/// at every step and the validation loss, relative 1e-4).
#[test]
fn pp2_on_emulated_devices_equals_one_rank() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path());
    let steps = 5;
    let llama = ["model.arch=\"llama\"", "model.n_head=4", "model.n_kv_head=2"];
    for (name, model, extra) in [
        ("GPT-2 1F1B", &[][..], &[][..]),
        ("Llama 1F1B", &llama[..], &[][..]),
        ("GPT-2 interleaved", &[][..], &["parallel.schedule=\"interleaved\"", "parallel.virtual_stages=2", "model.n_layer=4"][..]),
        ("GPT-2 dp 2 x pp 2, ZeRO 1", &[][..], &["parallel.dp=2", "parallel.zero=1", "train.batch_size=2"][..]),
        ("GPT-2 dp 2 x pp 2, ZeRO 3", &[][..], &["parallel.dp=2", "parallel.zero=3", "train.batch_size=2"][..]),
    ] {
        let dp = if extra.contains(&"parallel.dp=2") { 2 } else { 1 };
        let base: Vec<&str> = model.iter().chain(extra.iter().filter(|s| s.starts_with("model."))).copied().chain(["train.grad_accum=4", "train.eval_batches=1"]).collect();
        let mut cpu = Trainer::new(cfg(&base, "cpu"), data::Dataset::open(dir.path()).unwrap(), Path::new("")).unwrap();
        let mut times = StepTimes::default();
        let mut want: Vec<f64> = (0..steps).map(|_| cpu.train_step(&mut times).unwrap().0).collect();
        want.push(cpu.evaluate().unwrap());
        let sets: Vec<&str> = base.iter().copied().chain(extra.iter().copied()).chain(["parallel.pp=2"]).collect();
        let out = comm::run_local(2 * dp, Duration::from_secs(120), |c| {
            let config = cfg(&sets, "cuda-emu");
            let rank = engine::Rank::for_config(&c, &config)?;
            let mut t = Trainer::with_rank(config, data::Dataset::open(dir.path()).unwrap(), Path::new(""), rank)?;
            let mut times = StepTimes::default();
            let mut l = (0..steps).map(|_| t.train_step(&mut times).map(|x| x.0)).collect::<Result<Vec<f64>, _>>()?;
            l.push(t.evaluate()?);
            Ok::<_, engine::EngineError>(l)
        })
        .expect("ranks");
        for (i, (g, c)) in out[0].iter().zip(&want).enumerate() {
            assert!(((g - c) / c).abs() < 1e-4, "{name}: {} {g} on 2 device stages, {c} on one CPU rank", if i == steps { "validation loss".to_string() } else { format!("step {} loss", i + 1) });
        }
        for o in &out[1..] {
            assert_eq!(o, &out[0], "{name}: the ranks report different losses");
        }
    }
}
