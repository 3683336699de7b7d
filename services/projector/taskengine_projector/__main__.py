from taskengine_runtime import run_service

from taskengine_projector.projector import projector

if __name__ == "__main__":
    run_service("projector", projector)
