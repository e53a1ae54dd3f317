//! Job pipeline: one backup of one database through every stage, and restore drills.

pub mod backup;
pub mod drill;
