# TEMPORARY shim until the plugin-module branch lands
from unlearnops.methods import load_plugins, parse_config, run_method  # noqa
