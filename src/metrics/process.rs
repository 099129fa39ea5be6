//! The standard `process_*` metrics of the node's own process, read from
//! `/proc/self` at scrape time with the `procfs` crate.
//!
//! Names, types and meanings are those every Prometheus client library
//! exports (and dashboards expect): `process_cpu_seconds_total` (user plus
//! system CPU time), `process_resident_memory_bytes`,
//! `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`
//! (the soft limit), `process_start_time_seconds` (Unix time) and
//! `process_threads`. They carry no `kairos_` prefix.
//!
//! A value that cannot be read (no `/proc`, a limit that is `unlimited`) is
//! left out rather than reported as 0; the others are still reported.

use procfs::process::{LimitValue, Process};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// What `/proc/self` says about this process.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessSample {
    /// User plus system CPU time, seconds.
    pub cpu_seconds: Option<f64>,
    /// Resident set size, bytes.
    pub resident_bytes: Option<u64>,
    /// Virtual memory size, bytes.
    pub virtual_bytes: Option<u64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// The soft limit on open file descriptors.
    pub max_fds: Option<u64>,
    /// When the process started, Unix seconds.
    pub start_time_seconds: Option<f64>,
    /// OS threads.
    pub threads: Option<u64>,
}

impl ProcessSample {
    /// Reads this process's figures.
    pub fn of_self() -> ProcessSample {
        let Ok(process) = Process::myself() else {
            return ProcessSample::default();
        };
        let mut sample = ProcessSample::default();
        if let Ok(stat) = process.stat() {
            let ticks = procfs::ticks_per_second() as f64;
            sample.cpu_seconds = Some((stat.utime + stat.stime) as f64 / ticks);
            sample.resident_bytes = Some(stat.rss.saturating_mul(procfs::page_size()));
            sample.virtual_bytes = Some(stat.vsize);
            sample.threads = u64::try_from(stat.num_threads).ok();
            sample.start_time_seconds = procfs::boot_time_secs()
                .ok()
                .map(|boot| boot as f64 + stat.starttime as f64 / ticks);
        }
        sample.open_fds = process.fd_count().ok().map(|n| n as u64);
        sample.max_fds = process
            .limits()
            .ok()
            .and_then(|limits| match limits.max_open_files.soft_limit {
                LimitValue::Value(n) => Some(n),
                LimitValue::Unlimited => None,
            });
        sample
    }
}

/// Encodes a fresh [`ProcessSample`] on every scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sample = ProcessSample::of_self();
        if let Some(seconds) = sample.cpu_seconds {
            let counter = ConstCounter::new(seconds);
            counter.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                counter.metric_type(),
            )?)?;
        }
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                sample.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                sample.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                sample.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                sample.max_fds,
            ),
            (
                "process_threads",
                "Number of OS threads in the process.",
                sample.threads,
            ),
        ];
        for (name, help, value) in gauges {
            let Some(value) = value else { continue };
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        if let Some(start) = sample.start_time_seconds {
            let gauge = ConstGauge::new(start);
            gauge.encode(encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                None,
                gauge.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_memory_fds_threads_and_a_start_time() {
        let sample = ProcessSample::of_self();
        assert!(sample.resident_bytes.unwrap() > 0, "{sample:?}");
        assert!(
            sample.virtual_bytes.unwrap() >= sample.resident_bytes.unwrap(),
            "{sample:?}"
        );
        assert!(sample.open_fds.unwrap() >= 3, "stdin, stdout, stderr: {sample:?}");
        assert!(sample.max_fds.unwrap() >= sample.open_fds.unwrap(), "{sample:?}");
        assert!(sample.threads.unwrap() >= 1, "{sample:?}");
        assert!(sample.cpu_seconds.unwrap() >= 0.0, "{sample:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = sample.start_time_seconds.unwrap();
        assert!(
            start <= now + 1.0 && start > now - 86_400.0,
            "started in the last day: {start} vs {now}"
        );
    }
}
