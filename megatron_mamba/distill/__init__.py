"""Distillation from an attention teacher into a (hybrid) Mamba student: losses, the alpha
schedule, and the teacher/student pair that travels through the pipeline together."""
