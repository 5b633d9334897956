//! Integration tests of the tower layers, on tokio's paused clock (no real sleeps).

mod alloc;
mod discover;
mod layers;
mod stack;
