//! Control plane: sources of desired state and their translation to the model.
