from taskengine_runtime import run_service

from taskengine_dispatcher.dispatcher import dispatcher

if __name__ == "__main__":
    run_service("dispatcher", dispatcher)
