//! What a policy answers after a round: the next cap or stop-and-copy, with its audit record.

use serde::{Deserialize, Serialize};

use crate::stats::Factors;

/// Why pre-copy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// D_k <= h (claim 3).
    RemainingBelowStopLevel,
    /// k >= N (claim 3).
    RoundLimit,
    /// `xen`: fewer than 50 pages remain.
    FewPagesRemain,
    /// `xen`: the round sent more than the previous one while already at B_max.
    NotShrinkingAtMax,
    /// `xen`: more than 3 M bytes sent in total.
    TotalSentLimit,
    /// `qemu`: the remaining bytes fit in the downtime limit at the measured bandwidth.
    DowntimeFits,
    /// `qemu`: the round-count safety limit was hit.
    SafetyLimit,
    /// `predictive`: the estimate shows that even B_max cannot converge within N rounds.
    Infeasible,
    /// A completion or no-progress timeout whose action is `force` ended pre-copy.
    TimedOut,
}

impl StopReason {
    /// A short human label.
    pub fn label(self) -> &'static str {
        match self {
            StopReason::RemainingBelowStopLevel => "remaining <= h",
            StopReason::RoundLimit => "round limit N",
            StopReason::FewPagesRemain => "< 50 pages remain",
            StopReason::NotShrinkingAtMax => "not shrinking at B_max",
            StopReason::TotalSentLimit => "sent > 3 M",
            StopReason::DowntimeFits => "fits downtime limit",
            StopReason::SafetyLimit => "safety round limit",
            StopReason::Infeasible => "cannot converge",
            StopReason::TimedOut => "timeout forced it",
        }
    }
}

/// The branch a policy took, for the audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Branch {
    /// rhobar_k > T: B_{k+1} = max(B_k, B*).
    Raise,
    /// rhobar_k <= T: B_{k+1} = min(B_k, B*).
    KeepOrLower,
    /// A constant cap (`fixed`, `qemu`, `xen-v2`).
    Constant,
    /// `xen`: dirty rate above the current rate, rate raised.
    XenRaise,
    /// `xen`: rate kept.
    XenKeep,
    /// `predictive`: the planned lowest converging bandwidth.
    Plan,
    /// Pre-copy ends here.
    Stop,
}

/// The next step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Run round k+1 with this cap (bytes/s).
    Continue { next_cap_bytes_per_s: f64 },
    /// Pause the guest and send what remains.
    StopAndCopy { reason: StopReason },
}

/// The inputs and intermediate values of one decision (section 4's audit record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct Audit {
    /// k.
    pub round: u32,
    /// B_k^set.
    pub cap_bytes_per_s: f64,
    /// V_k / t_k.
    pub effective_bytes_per_s: f64,
    /// P_k.
    pub dirty_rate_bytes_per_s: f64,
    /// rho_k.
    pub factor: f64,
    /// rhobar_k.
    pub avg_factor: f64,
    /// T, for the policies that have one.
    pub threshold: Option<f64>,
    /// Phat, the mean dirtying rate so far.
    pub mean_dirty_rate_bytes_per_s: f64,
    /// B*, the policy's estimate before direction and clamping, when it computes one.
    pub estimate_bytes_per_s: Option<f64>,
    /// D_k, what remains to send.
    pub remaining_bytes: f64,
    /// The branch taken.
    pub branch: Branch,
    /// Whether clamping to [B_min, B_max] changed the cap.
    pub clamped: bool,
    /// The policy's estimate shows that not even B_max converges within N rounds.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub infeasible: bool,
    /// The rescue: the share of the guest's CPU to take away from the next round on (0.3 = the
    /// guest runs 70 % of the time), when no bandwidth up to B_max converges without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<f64>,
    /// What the policy's plan predicted this round would leave (`predictive`), to compare with
    /// `remaining_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_remaining_bytes: Option<f64>,
    /// Free-text remark (e.g. why an estimate fell back to B_max).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Audit {
    /// An audit record with the measured quantities filled in and the branch still open.
    pub fn measured(f: &Factors, cap: f64, remaining: f64, threshold: Option<f64>) -> Audit {
        Audit {
            round: f.round,
            cap_bytes_per_s: cap,
            effective_bytes_per_s: f.effective_bandwidth,
            dirty_rate_bytes_per_s: f.dirty_rate,
            factor: f.factor,
            avg_factor: f.avg_factor,
            threshold,
            mean_dirty_rate_bytes_per_s: f.mean_dirty_rate,
            estimate_bytes_per_s: None,
            remaining_bytes: remaining,
            branch: Branch::Stop,
            clamped: false,
            infeasible: false,
            throttle: None,
            predicted_remaining_bytes: None,
            note: None,
        }
    }
}

/// A policy's mid-round answer: raise the cap of the round under way now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct Raise {
    /// The new cap the policy asks for (bytes/s), above the one in force.
    pub wish_bytes_per_s: f64,
    /// Why, in words (what the check saw against the plan).
    pub reason: String,
}

/// A policy's answer to a mid-round check.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Probed {
    /// Raise the cap of the round under way now.
    pub raise: Option<Raise>,
    /// The policy kept the observation (it will weigh in its later decisions): the executor's
    /// record keeps it too, so that a replay sees what the policy saw.
    pub kept: bool,
}

/// A policy's answer after round k.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub struct Decision {
    /// What to do next.
    #[serde(flatten)]
    pub action: Action,
    /// Why.
    pub audit: Audit,
}

impl Decision {
    /// Stop-and-copy for `reason`.
    pub fn stop(reason: StopReason, mut audit: Audit) -> Decision {
        audit.branch = Branch::Stop;
        Decision {
            action: Action::StopAndCopy { reason },
            audit,
        }
    }

    /// Continue with `cap`, taking `branch`.
    pub fn next(cap: f64, branch: Branch, mut audit: Audit) -> Decision {
        audit.branch = branch;
        Decision {
            action: Action::Continue {
                next_cap_bytes_per_s: cap,
            },
            audit,
        }
    }

    /// The next round's cap, if pre-copy goes on.
    pub fn next_cap(&self) -> Option<f64> {
        match self.action {
            Action::Continue {
                next_cap_bytes_per_s,
            } => Some(next_cap_bytes_per_s),
            Action::StopAndCopy { .. } => None,
        }
    }

    /// The stop reason, if pre-copy ends.
    pub fn stop_reason(&self) -> Option<StopReason> {
        match self.action {
            Action::StopAndCopy { reason } => Some(reason),
            Action::Continue { .. } => None,
        }
    }
}
