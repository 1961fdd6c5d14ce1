from gateway.cli import main

if __name__ == "__main__":  # guard: spawned children import this module too
    main()
