//! This host's load, as the master's scheduler sees it.

use log::warn;
use protocol::LoadReport;
use sysinfo::{MemoryRefreshKind, System};

/// Samples whole-host CPU, load average and memory.
///
/// Holds one `System` for the worker's life: CPU usage is the difference between two readings of
/// `/proc/stat` (or the platform's equivalent), so a fresh `System` per sample would always say 0.
/// sysinfo ignores CPU refreshes closer than `MINIMUM_CPU_UPDATE_INTERVAL` (keeping the previous
/// value), so sampling on every heartbeat is safe at any interval.
pub struct LoadSampler {
    /// `None` if sysinfo cannot read this platform: the worker still runs tasks and reports zeros.
    system: Option<System>,
}

impl LoadSampler {
    pub fn new() -> Self {
        match System::new() {
            Ok(mut system) => {
                // Takes the first CPU reading, so the report sent right after connecting has a
                // baseline to compare with.
                system.refresh_cpu_usage();
                LoadSampler {
                    system: Some(system),
                }
            }
            Err(e) => {
                warn!("cannot read system load ({e}); load reports will say 0");
                LoadSampler { system: None }
            }
        }
    }

    /// A load report for now, with `running` tasks.
    pub fn sample(&mut self, running: u32) -> LoadReport {
        let Some(system) = self.system.as_mut() else {
            return LoadReport {
                running,
                ..LoadReport::default()
            };
        };
        system.refresh_cpu_usage();
        system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let cpu = system.global_cpu_usage();
        LoadReport {
            // NaN (no CPUs readable) must not reach the master's score arithmetic.
            cpu_percent: if cpu.is_finite() {
                cpu.clamp(0.0, 100.0)
            } else {
                0.0
            },
            load_avg_1m: System::load_average().map_or(0.0, |l| l.one as f32),
            mem_used: system.used_memory(),
            mem_total: system.total_memory(),
            running,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_plausible_numbers() {
        let mut s = LoadSampler::new();
        for _ in 0..2 {
            let r = s.sample(3);
            assert_eq!(r.running, 3);
            assert!((0.0..=100.0).contains(&r.cpu_percent), "{r:?}");
            assert!(r.load_avg_1m >= 0.0, "{r:?}");
            if cfg!(target_os = "linux") {
                assert!(r.mem_total > 0 && r.mem_used <= r.mem_total, "{r:?}");
            }
        }
    }
}
