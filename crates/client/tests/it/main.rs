//! Integration tests of the tower layers, on tokio's paused clock (no real sleeps).

mod alloc;
mod layers;
mod stack;
