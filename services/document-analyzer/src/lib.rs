//! document-analyzer: redacts, embeds and classifies `document-uploads` into
//! routing decisions.

pub mod config;
pub mod pii;
pub mod pipeline;
