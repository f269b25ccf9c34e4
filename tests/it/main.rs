//! Integration tests: one binary, every test against the real broker in a vhost of its own.

mod bad_input;
mod cli;
mod ops;
mod producer;
mod support;
mod topology;
mod worker;
