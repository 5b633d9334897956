//! Integration tests of the Raft core: a deterministic cluster harness (`cluster`), a seeded
//! simulation sweep with faults and safety checks after every step (`sim`), and targeted
//! scenarios (`scenarios`).

mod cluster;
mod scenarios;
mod script;
mod sim;
