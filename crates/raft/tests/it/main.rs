//! Integration tests of the Raft core: a deterministic cluster harness (`cluster`) with an
//! optional KV layer on colony's store state machine (`kv`), a seeded
//! simulation sweep with faults and safety checks after every step (`sim`), and targeted
//! scenarios (`scenarios`).

mod cluster;
mod kv;
mod scenarios;
mod script;
mod sim;
