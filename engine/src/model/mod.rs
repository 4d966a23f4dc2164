//! The domain model, in Placement's words: resource classes, inventories, providers,
//! consumers and allocations, flavors, images, server groups and request specs. Everything
//! that enters the engine is validated here, with errors that name the field.

mod catalog;
mod inventory;
mod names;
mod provider;
mod request;

pub use catalog::{
    Flavor, FlavorSpec, GroupPolicy, Image, ImageSpec, ServerGroup, ServerGroupSpec,
};
pub use inventory::{Inventory, MAX_ALLOCATION_RATIO, MAX_AMOUNT};
pub use names::{
    ClassId, STANDARD_CLASSES, validate_aggregate, validate_az, validate_class_name, validate_name,
    validate_trait,
};
pub use provider::{Allocation, ProviderInfo, ProviderSpec, ProviderUpdate, ProviderUsage};
pub use request::{RequestSpec, parse_uuid};
