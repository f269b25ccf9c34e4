//! Integration tests: one binary, every test against the real broker in a vhost of its own.

mod bad_input;
mod broadcast;
mod chains;
mod cli;
mod console;
mod contract;
mod control;
mod examples;
mod faults;
mod layers;
mod ops;
mod producer;
mod results;
mod schedules;
mod security;
mod support;
mod topology;
mod unique;
mod worker;
