"""Task models around a backbone: built for a run (``model.build_model``), rebuilt from a checkpoint
(``model.load_trained`` / ``model.attach_trained``), and checkpoints rewritten (``compression``).

Above methods and tasks (it joins a method's encoder to a task's head), below training, serving, interop
and the CLI, which all use it.
"""
