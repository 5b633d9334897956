//! Integration tests: the real `colony` binary on ephemeral loopback ports.

mod anti_entropy;
mod bad_input;
mod blocking;
mod cli;
mod clock;
mod disk_full;
mod durability;
mod etcd_bad_input;
mod etcd_binary_keys;
mod etcd_watch;
mod etcdctl;
mod faults;
mod forwarding;
mod health;
mod membership;
mod replication;
mod startup;
mod support;
mod tidy;
