"""Entry points. Each parses configuration, sets up logging and starts a service: nothing else."""
import warnings

# eventlet announces its deprecation on import (oslo.messaging imports it in every process).
# Known and documented (docs/operations.md); keep it out of every command's output.
warnings.filterwarnings('ignore', message=r'(?s).*Eventlet is deprecated')
