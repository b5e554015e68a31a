//! Where a run computes: `[train] device` (`auto`, `cpu`, `cuda`, `cuda:N`), overridable with
//! `cargo xtask train --device`. The probing and the fallback are `echo_kernels::cuda`'s
//! (`Device::resolve_explained`): `auto` never fails (CPU when CUDA is not usable), an
//! explicit `cuda:N` without that GPU is an error saying what is missing.

use crate::error::{Result, TrainError};
use echo_kernels::cuda::{self, DeviceSpec};
use echo_tensor::Device;

/// The device `spec` names on this machine, and one line saying which and why.
pub fn resolve(parsed: DeviceSpec) -> Result<(Device, String)> {
    let (picked, why_not) =
        cuda::Device::resolve_explained(parsed).map_err(|e| TrainError::Device(format!("device {parsed}: {e}")))?;
    let device = match picked {
        cuda::Device::Cpu => Device::Cpu,
        cuda::Device::Cuda(n) => Device::Cuda(n),
    };
    let notice = match (parsed, why_not) {
        (DeviceSpec::Auto, Some(why)) => format!("device: cpu (auto: CUDA is not usable here: {why})"),
        (DeviceSpec::Auto, None) => {
            format!("device: {device} (auto: a CUDA driver, device, NVRTC and cuBLAS were found)")
        }
        _ => format!("device: {device} (as requested)"),
    };
    Ok((device, notice))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_always_available_and_bad_names_are_errors() {
        assert_eq!(resolve(DeviceSpec::Cpu).unwrap(), (Device::Cpu, "device: cpu (as requested)".to_string()));
        let e = "tpu".parse::<DeviceSpec>().unwrap_err().to_string();
        assert!(e.contains("expected auto, cpu, cuda or cuda:N"), "{e}");
    }

    /// Without a usable GPU (this is what CI sees): auto picks the CPU and says why; an
    /// explicit GPU is an error. With one, both pick it.
    #[test]
    fn auto_falls_back_with_a_reason() {
        let (d, notice) = resolve(DeviceSpec::Auto).unwrap();
        match cuda::probe().unusable() {
            Some(why) => {
                assert_eq!(d, Device::Cpu);
                assert!(notice.contains("auto") && notice.contains(&why.to_string()), "{notice}");
                let e = resolve(DeviceSpec::Cuda(0)).unwrap_err().to_string();
                assert!(e.contains("cuda:0") && e.contains(&why.to_string()), "{e}");
            }
            None => {
                assert_eq!(d, Device::Cuda(0));
                assert_eq!(resolve(DeviceSpec::Cuda(0)).unwrap().0, Device::Cuda(0));
            }
        }
    }
}
