//! Obligations: datasets that organisations must deliver to this node on a
//! schedule, and what was delivered. `deliveries` records each attempt to
//! take a batch; compliance is judged from those records.

pub mod deliveries;

pub use deliveries::{Deliveries, Delivery, DeliveryError, Outcome};
