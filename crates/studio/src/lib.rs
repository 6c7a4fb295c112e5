//! The stages of baton's content pipeline, each a library function and a process entry point.
//!
//! [`scenes`] (an LLM writes the storyboard), [`voice`] (narration) and [`images`]
//! (diffusion), the storyboard that connects them ([`storyboard`]), the model store and hub
//! behind them, and where they compute ([`compute`]). This crate links the tensor libraries,
//! and CUDA in a `cuda` build; only the stage program `baton-stages` links it, never the
//! supervisor.

pub mod compute;
pub mod dump;
pub mod hub;
pub mod images;
pub mod llm;
pub mod model_store;
pub mod quality;
pub mod scenes;
pub mod storyboard;
pub mod video;
pub mod voice;
pub mod wav;
