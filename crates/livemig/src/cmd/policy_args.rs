//! The policy flags (N, h, bandwidth bounds, T, ...) shared by `simulate`, `bench` and `qemu`.

use livemig_sim::scenario::ScenarioSpec;

/// The operator's settings of every policy, as command-line flags.
#[derive(Debug, Clone, clap::Args)]
pub struct PolicyArgs {
    /// Round limit N.
    #[arg(long, default_value_t = 10)]
    pub rounds: u32,
    /// Stop level h: pre-copy ends when at most this much remains dirty.
    #[arg(long, default_value = "64MiB")]
    pub stop_remaining: String,
    /// B_min.
    #[arg(long, default_value = "100Mbit/s")]
    pub min_bandwidth: String,
    /// B_max (also the stop-and-copy bandwidth).
    #[arg(long, default_value = "10Gbit/s")]
    pub max_bandwidth: String,
    /// Round 1's bandwidth (default B_min).
    #[arg(long)]
    pub initial_bandwidth: Option<String>,
    /// The constant cap of `fixed` (default B_max) and `qemu` (default 128MiB/s).
    #[arg(long)]
    pub bandwidth: Option<String>,
    /// `qemu`: downtime limit.
    #[arg(long, default_value = "300ms")]
    pub downtime_limit: String,
    /// Threshold T set by hand (default (h/M)^(1/N)).
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Page size.
    #[arg(long, default_value = "4096")]
    pub page_size: String,
}

impl PolicyArgs {
    /// A scenario spec carrying these settings (link settings left to their defaults).
    pub fn spec(&self, name: &str, memory: &str, workload: &str) -> ScenarioSpec {
        ScenarioSpec {
            name: name.to_string(),
            description: None,
            memory: memory.to_string(),
            workload: workload.to_string(),
            rounds: Some(self.rounds),
            stop_remaining: Some(self.stop_remaining.clone()),
            min_bandwidth: Some(self.min_bandwidth.clone()),
            max_bandwidth: Some(self.max_bandwidth.clone()),
            initial_bandwidth: self.initial_bandwidth.clone(),
            threshold: self.threshold,
            bandwidth: self.bandwidth.clone(),
            downtime_limit: Some(self.downtime_limit.clone()),
            page_size: Some(self.page_size.clone()),
            link_capacity: None,
            state_size: None,
            resume_latency: None,
            noise: None,
            seed: None,
        }
    }
}
