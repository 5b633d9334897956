//! Colony's client resilience library.
#![deny(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

pub mod consistency;
pub mod event;
pub mod hash;
pub mod layer;
pub mod overload;
pub mod policy;
