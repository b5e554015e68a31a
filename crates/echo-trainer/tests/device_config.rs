//! `[train] device`: parsing, the default, serialisation (configs written before the key existed
//! read the same), resuming under another device setting, and a short run on CUDA against the
//! same run on the CPU (skipped with a message without a usable driver).

use echo_kernels::cuda::DeviceSpec;
use echo_trainer::{train, RunConfig, RunOptions};
use std::path::PathBuf;

fn fixture() -> PathBuf {
    echo_testdata::tiny_llama_a()
}

fn config(device: Option<&str>) -> RunConfig {
    let device = device.map(|d| format!("device = \"{d}\"\n")).unwrap_or_default();
    let text = format!(
        "[model]\npath = \"unused\"\n[data]\nsynthetic_records = 24\nval_count = 4\ncutoff = 200\n[adapter]\nr = 4\nalpha = 8\ndropout = 0.0\n\
         [echo]\nsource_layers = [-2, -1]\ntarget_layers = [0]\nd_echo = 8\n\
         [train]\nmax_steps = 3\nbatch_size = 2\nmicro_batch_size = 2\nlr = 1e-2\nwarmup_steps = 0\neval_every = 0\nsave_every = 0\n{device}"
    );
    RunConfig::parse(&text).unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("echo-device-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn the_device_key_defaults_to_auto_and_is_checked() {
    assert_eq!(config(None).train.device, DeviceSpec::Auto);
    for (ok, spec) in [
        ("auto", DeviceSpec::Auto),
        ("cpu", DeviceSpec::Cpu),
        ("cuda", DeviceSpec::Cuda(0)),
        ("cuda:1", DeviceSpec::Cuda(1)),
        ("CUDA:0", DeviceSpec::Cuda(0)),
    ] {
        assert_eq!(config(Some(ok)).train.device, spec, "{ok}");
    }
    let e = RunConfig::parse("[model]\npath = \"x\"\n[train]\ndevice = \"gpu0\"\n").unwrap_err().to_string();
    assert!(e.contains("train.device") && e.contains("cuda:N") && e.contains("gpu0"), "{e}");
    // Left out when it is the default: a config serialised before the key existed is unchanged.
    assert!(!toml::to_string(&config(None)).unwrap().contains("device"));
    assert!(toml::to_string(&config(Some("cpu"))).unwrap().contains("device = \"cpu\""));
}

#[test]
fn a_checkpoint_resumes_under_another_device_setting() {
    let out = tmp("resume");
    let first =
        train(&config(Some("auto")), &fixture(), &out, &RunOptions { stop_after: Some(1), ..Default::default() })
            .unwrap();
    assert_eq!(first.steps, 1);
    let resumed =
        train(&config(Some("cpu")), &fixture(), &out, &RunOptions { resume: true, ..Default::default() }).unwrap();
    assert_eq!((resumed.steps, resumed.device.as_str()), (3, "cpu"));
    std::fs::remove_dir_all(out).ok();
}

#[test]
#[ignore = "needs a CUDA GPU; device-bundle/run.sh runs it with --include-ignored"]
fn a_short_run_on_cuda_follows_the_cpu() {
    if let Some(why) = echo_kernels::cuda::probe().unusable() {
        panic!("this test needs a usable CUDA device: {why}");
    }
    let (a, b) = (tmp("cpu"), tmp("cuda"));
    let cpu = train(&config(Some("cpu")), &fixture(), &a, &RunOptions::default()).unwrap();
    let gpu = train(&config(Some("cuda:0")), &fixture(), &b, &RunOptions::default()).unwrap();
    assert_eq!(gpu.device, "cuda:0");
    // The CPU run uses the f32 weights, the GPU run bf16 ones: close, not equal.
    let close = |x: Option<f32>, y: Option<f32>| {
        let (x, y) = (x.unwrap(), y.unwrap());
        (x - y).abs() <= 3e-2 * x.abs().max(1.0)
    };
    assert!(close(cpu.first_loss, gpu.first_loss), "first loss {:?} vs {:?}", cpu.first_loss, gpu.first_loss);
    assert!(close(cpu.last_loss, gpu.last_loss), "last loss {:?} vs {:?}", cpu.last_loss, gpu.last_loss);
    assert!(
        close(cpu.best_val_loss, gpu.best_val_loss),
        "validation {:?} vs {:?}",
        cpu.best_val_loss,
        gpu.best_val_loss
    );
    // A run stopped on the GPU and resumed there from its checkpoint (parameters and AdamW
    // moments read back from the device and uploaded again) ends exactly where the straight
    // one did: the kernels and cuBLAS are deterministic.
    let c = tmp("cuda-resumed");
    train(&config(Some("cuda:0")), &fixture(), &c, &RunOptions { stop_after: Some(2), ..Default::default() }).unwrap();
    let resumed =
        train(&config(Some("cuda:0")), &fixture(), &c, &RunOptions { resume: true, ..Default::default() }).unwrap();
    assert_eq!(
        resumed.last_loss.map(f32::to_bits),
        gpu.last_loss.map(f32::to_bits),
        "{:?} vs {:?}",
        resumed.last_loss,
        gpu.last_loss
    );
    std::fs::remove_dir_all(c).ok();
    std::fs::remove_dir_all(a).ok();
    std::fs::remove_dir_all(b).ok();
}
