from taskengine_runtime import run_service

from taskengine_notifier.notifier import notifier

if __name__ == "__main__":
    run_service("notifier", notifier)
