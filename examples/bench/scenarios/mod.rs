//! The six scenarios, one file each; every one returns a run's `Figures`.

pub(crate) mod api_load;
pub(crate) mod drain;
pub(crate) mod lateness;
pub(crate) mod registrations;
pub(crate) mod scheduler;
pub(crate) mod startup;
