"""P-Tuning v2: deep continuous prompts at every layer of a frozen pretrained transformer."""

import logging

__version__ = "0.1.0"

# bitsandbytes (imported by PEFT when installed) warns on every start that it cannot fetch an optional
# CPU 4-bit kernel from the hub; its own fallback is used, so the warning only alarms users.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

# DeepSpeed (imported by Accelerate when installed) warns on every start of a machine without a GPU that
# it falls back to its CPU accelerator: the expected case here, not news. Its logger resets its level when
# created, so a filter (which it keeps) drops just that message.
logging.getLogger("DeepSpeed").addFilter(
    lambda record: "Setting accelerator to CPU" not in record.getMessage()
)
