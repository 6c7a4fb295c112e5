//! The stages of baton's content pipeline, each a library function and a process entry point.
//!
//! What is here so far: the list of stages and what each one makes, and the storyboard that
//! connects them ([`storyboard`]). The stages themselves (an LLM storyboard, narration,
//! diffusion images) land with their own issues.

pub mod hub;
pub mod images;
pub mod llm;
pub mod model_store;
pub mod scenes;
pub mod storyboard;
pub mod voice;
pub mod wav;

/// A stage of the built-in content pipeline, in the order a run executes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// An LLM writes the storyboard: `1_scripts/{slug}_scenes.json`.
    Scenes,
    /// A voice model narrates each scene: `2_audio/scene_NN.wav`.
    Voice,
    /// A diffusion model draws each scene: `3_images/scene_NN.png`.
    Images,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Scenes, Stage::Voice, Stage::Images];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Scenes => "scenes",
            Stage::Voice => "voice",
            Stage::Images => "images",
        }
    }

    /// The folder of the run that holds this stage's files.
    pub fn output_folder(self) -> &'static str {
        match self {
            Stage::Scenes => "1_scripts",
            Stage::Voice => "2_audio",
            Stage::Images => "3_images",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_run_in_folder_order() {
        let folders: Vec<_> = Stage::ALL.iter().map(|s| s.output_folder()).collect();
        let mut sorted = folders.clone();
        sorted.sort();
        assert_eq!(folders, sorted);
        assert_eq!(Stage::ALL.map(Stage::name), ["scenes", "voice", "images"]);
    }
}
