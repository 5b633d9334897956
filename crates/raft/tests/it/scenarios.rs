//! Targeted scenarios (filled in below).
