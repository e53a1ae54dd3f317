//! Job pipeline: one backup of one database through every stage, and restore drills.

pub mod backup;
pub mod destinations;
pub mod drill;
pub mod job;
pub mod run;

pub use job::Job;
pub use run::{Context, Outcome, Trigger};
