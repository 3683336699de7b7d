from taskengine_runtime import run_service

from taskengine_admission.admission import admission

if __name__ == "__main__":
    run_service("admission", admission)
