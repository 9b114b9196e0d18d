"""Serves the luna_plugins sources compiled into the binary, so plugins import
them with nothing installed."""

import importlib.abc
import importlib.util


class EmbeddedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, sources):
        # module name -> (source, is_package)
        self.sources = sources

    def find_spec(self, name, path=None, target=None):
        if name not in self.sources:
            return None
        return importlib.util.spec_from_loader(name, self, origin=f"<luna-matcher>/{name}", is_package=self.sources[name][1])

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        source, _ = self.sources[module.__name__]
        exec(compile(source, module.__spec__.origin, "exec"), module.__dict__)
