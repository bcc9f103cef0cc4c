from fracture.cli.main import main

raise SystemExit(main())
