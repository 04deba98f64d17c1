//! Faults (to come).
