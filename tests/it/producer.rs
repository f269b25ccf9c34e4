//! The producer on a real broker.
