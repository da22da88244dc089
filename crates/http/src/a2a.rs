//! The Agent2Agent (A2A 1.0) binding of baton's agents: an Agent Card per agent and
//! the JSON-RPC binding (docs/a2a.md). An A2A task is a baton task; its context is
//! the task itself; a message is an append, busy or not as the agent's `on_busy` says.

pub mod card;
mod parts;
pub mod rpc;
mod stream;
mod tasks;
