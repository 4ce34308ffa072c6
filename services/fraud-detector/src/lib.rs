//! fraud-detector: turns `transactions` into fraud decisions with a credit-risk
//! model trained offline (models/fraud) and rules.

pub mod config;
pub mod pipeline;
pub mod rules;
