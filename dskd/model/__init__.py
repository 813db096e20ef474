"""The paper's network: teachers, the two students and the DF embedding, loss and maps."""
